"""Auth, limits, health, metrics and client disconnect against the live gateway and tritonserver."""

from __future__ import annotations

import re
import time

import httpx2 as httpx
import openai
import pytest

from stepaudio_server.launcher import free_port
from tests.gateway.helpers import API_KEY
from tests.server.helpers import BatchCounts

pytestmark = pytest.mark.server
SPEECH = {"model": "step-audio-tts", "input": "你好", "voice": "Tingting", "response_format": "pcm"}


def metric(gateway, name: str, **labels) -> float:
    text = httpx.get(gateway.url + "/metrics").text
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(label in line for label in wanted):
                total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"}])
def test_missing_or_wrong_key_is_401(gateway, headers):
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/audio/speech"), ("GET", "/v1/audio/voices")):
        response = httpx.request(method, gateway.url + path, headers=headers, json=SPEECH)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
    assert httpx.get(gateway.url + "/health").status_code == 200  # probes need no key


def test_openai_client_with_a_wrong_key(gateway):
    from openai import OpenAI

    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        OpenAI(base_url=gateway.url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_models_lists_speech_and_chat(client):
    names = {m.id for m in client.models.list()}
    assert {"step-audio-tts", "step-audio-chat", "tts-1"} <= names


def test_oversized_body_is_413(http):
    for kwargs in ({"json": {**SPEECH, "input": "x" * 2_100_000}},  # Content-Length
                   {"content": iter([b"{" + b" " * 1_000_000] * 3)}):  # chunked, no length
        response = http.post("/v1/audio/speech", headers={"content-type": "application/json"}, **kwargs)
        assert response.status_code == 413
        assert "larger than 2000000 bytes" in response.json()["error"]["message"]


def test_rate_limit_is_429_with_retry_after(start_gateway):
    gateway = start_gateway("--rate-per-minute", "2")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    bad_model = {**SPEECH, "model": "none"}  # refused after the limiter counted it: no model work needed
    statuses = [httpx.post(gateway.url + "/v1/audio/speech", json=bad_model, headers=headers).status_code for _ in range(2)]
    assert statuses == [404, 404]
    refused = httpx.post(gateway.url + "/v1/audio/speech", json=bad_model, headers=headers)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"] == {"message": refused.json()["error"]["message"], "type": "rate_limit_error",
                                       "param": None, "code": "rate_limit_exceeded"}


def test_concurrency_limit_is_429_until_the_stream_ends(start_gateway):
    gateway = start_gateway("--max-concurrent", "1")
    client = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120)
    with client.stream("POST", "/v1/audio/speech", json={**SPEECH, "max_new_tokens": 120}) as running:
        assert running.status_code == 200
        second = client.post("/v1/audio/speech", json=SPEECH)
        assert second.status_code == 429 and second.json()["error"]["code"] == "concurrency_limit_exceeded"
        assert second.headers["retry-after"] == "1"
        running.read()  # to the end: the slot is released, nothing cancelled
    assert client.post("/v1/audio/speech", json=SPEECH).status_code == 200


def test_client_disconnect_cancels_the_triton_stream(gateway, triton_server, http):
    llm = BatchCounts(triton_server, "tts_llm")
    speech = BatchCounts(triton_server, "tts_stream")
    cancelled = metric(gateway, "gateway_triton_streams_cancelled_total", model="tts_stream")
    with http.stream("POST", "/v1/audio/speech", json={**SPEECH, "max_new_tokens": 2000}) as response:
        assert response.status_code == 200
        first = next(response.iter_raw())
        assert first  # audio is flowing; 2000 ids would take minutes on this machine
    # Leaving the block closed the connection. tts_stream answers a cancel by sending CANCEL=<its stream id> to
    # tts_llm, so the LLM model counts two requests (the stream, then the cancel); a finished stream counts one.
    inferences, _ = llm.settle(2, timeout_s=30)
    assert inferences == 2
    # On Triton 2.51 the gateway never cancels the running gRPC call (compat.py: in_band_grpc_cancel): it sends
    # CANCEL with the stream's token, a second tts_stream request, and reads the stream to its end.
    assert speech.settle(2, timeout_s=30)[0] == 2
    deadline = time.monotonic() + 10
    while metric(gateway, "gateway_triton_streams_cancelled_total", model="tts_stream") <= cancelled:
        assert time.monotonic() < deadline, "the gateway did not record the cancelled stream"
        time.sleep(0.1)


def test_health_needs_triton_and_every_model(gateway, start_gateway):
    assert httpx.get(gateway.url + "/health").json()["status"] == "ready"
    missing = start_gateway("--require-model", "tts_stream", "--require-model", "no_such_model")
    response = httpx.get(missing.url + "/health")
    assert response.status_code == 503 and "no_such_model" in response.json()["error"]["message"]
    assert "tts_stream" not in response.json()["error"]["message"]
    down = start_gateway(triton_grpc=f"127.0.0.1:{free_port()}")
    response = httpx.get(down.url + "/health")
    assert response.status_code == 503 and "server" in response.json()["error"]["message"]


def test_metrics_count_requests_refusals_and_first_audio(gateway, http, client):
    before_ok = metric(gateway, "gateway_requests_total", route="/v1/audio/speech", status="200")
    before_401 = metric(gateway, "gateway_requests_total", route="/v1/audio/speech", status="401")
    before_first = metric(gateway, "gateway_first_audio_seconds_count", route="/v1/audio/speech")
    client.audio.speech.create(**SPEECH)
    httpx.post(gateway.url + "/v1/audio/speech", json=SPEECH)
    assert metric(gateway, "gateway_requests_total", route="/v1/audio/speech", status="200") == before_ok + 1
    assert metric(gateway, "gateway_requests_total", route="/v1/audio/speech", status="401") == before_401 + 1
    assert metric(gateway, "gateway_first_audio_seconds_count", route="/v1/audio/speech") == before_first + 1
    assert re.search(r'gateway_in_flight\{route="/metrics"\} 1\.0', http.get("/metrics").text)


def test_refuses_a_public_address_without_keys(tmp_path):
    import subprocess
    import sys

    from stepaudio_server.launcher import PROJECT_ROOT

    result = subprocess.run([sys.executable, "-m", "gateway", "--triton-grpc", "127.0.0.1:1", "--host", "0.0.0.0",
                             "--db", str(tmp_path / "v.sqlite3")], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "without API keys" in result.stderr
