"""The gateway's routers and door without a server: each router alone on a bare app, malformed bodies, bounded
metrics labels, the key checked before the body, failed-auth limits, Origin/Host checks, named keys."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gateway.routes import chat, models, pages, speech, voices
from tests.gateway.fakes import FakeTriton, full_app, one_router_app, state, wav_bytes

KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
SPEECH = {"model": "step-audio-tts", "input": "你好", "voice": "Tingting", "response_format": "pcm"}
CHAT = {"model": "step-audio-chat", "messages": [{"role": "user", "content": "你好"}]}


def test_each_router_serves_on_its_own(tmp_path):
    fake = FakeTriton(chunks=3)
    gateway = state(tmp_path, fake)
    listed = TestClient(one_router_app(models.router, gateway)).get("/v1/models").json()
    assert {"step-audio-tts", "step-audio-chat"} <= {m["id"] for m in listed["data"]}

    audio = TestClient(one_router_app(speech.router, gateway)).post("/v1/audio/speech", json=SPEECH)
    assert audio.status_code == 200 and audio.headers["x-sample-rate"] == "22050"
    assert len(audio.content) == 3 * 512 * 2  # every fake chunk as s16
    assert fake.calls[-1][0] == "tts_stream" and fake.calls[-1][1]["SPEAKER"][0] == b"Tingting"

    completion = TestClient(one_router_app(chat.router, gateway)).post("/v1/chat/completions", json=CHAT).json()
    assert completion["choices"][0]["message"]["content"] == "part0 part1 part2 "
    assert completion["step_audio"]["user_transcript"] == "heard"

    presets = TestClient(one_router_app(voices.router, gateway)).get("/v1/audio/voices").json()["data"]
    assert [v["id"] for v in presets if v["type"] == "preset"] == list(gateway.settings.preset_voices)

    page = TestClient(one_router_app(pages.router, gateway))
    assert page.get("/health").json()["status"] == "ready" and "gateway_" in page.get("/metrics").text
    gateway.triton = FakeTriton(not_ready=["tts_llm"])
    assert page.get("/health").status_code == 503


def test_chat_without_a_voice_leaves_the_speaker_to_the_served_model(tmp_path):
    fake = FakeTriton()
    client = TestClient(one_router_app(chat.router, state(tmp_path, fake)))
    reply = client.post("/v1/chat/completions", json={**CHAT, "modalities": ["text", "audio"], "audio": {"format": "wav"}})
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["audio"]["data"]
    assert not {"SPEAKER", "PROMPT_AUDIO"} & set(fake.calls[-1][1])
    client.post("/v1/chat/completions", json={**CHAT, "modalities": ["audio"], "audio": {"voice": {"id": "Tingting"}}})
    assert fake.calls[-1][1]["SPEAKER"][0] == b"Tingting"


def _user(content) -> dict:
    return {**CHAT, "messages": [{"role": "user", "content": content}]}


@pytest.mark.parametrize("body, param", [
    (_user([{"type": "input_audio", "input_audio": "x"}]), "messages[0].content[0].input_audio"),
    (_user([{"type": "input_audio", "input_audio": {"data": 5}}]), "messages[0].content[0].input_audio.data"),
    ({**CHAT, "messages": [{"role": "assistant", "content": "", "audio": "x"}, CHAT["messages"][0]]}, "messages[0].audio"),
    ({**CHAT, "modalities": ["audio"], "audio": {"voice": {"id": 5}}}, "audio.voice.id"),
    (_user([{"type": "video", "video": {}}]), "messages[0].content[0]"),
    ({**CHAT, "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({**CHAT, "messages": "hi"}, "messages"),
])
def test_malformed_chat_bodies_are_400_naming_the_field(tmp_path, body, param):
    response = TestClient(full_app(tmp_path, api_keys=(KEY,))).post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"].startswith(param)


def test_a_body_that_is_not_json_is_400(tmp_path):
    client = TestClient(full_app(tmp_path, api_keys=(KEY,)))
    response = client.post("/v1/audio/speech", content=b'{"model": ', headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def _series(client) -> int:
    return sum(1 for line in client.get("/metrics").text.splitlines() if line.startswith("gateway_requests_total{"))


def test_made_up_methods_and_paths_add_no_metric_series(tmp_path):
    client = TestClient(full_app(tmp_path, api_keys=(KEY,)))
    client.get("/health")
    before = _series(client)
    for index in range(50):
        client.request(f"M{index:05d}AAAA", "/v1/models", headers=AUTH)
        client.get(f"/no/such/path/{index}")
    after = _series(client)
    assert after - before <= 4, client.get("/metrics").text  # (other, 405), (unmatched, 404), and /metrics itself
    text = client.get("/metrics").text
    assert 'method="other"' in text and 'route="unmatched"' in text and "M00001" not in text and "/no/such" not in text


class CountingReceive:
    """An ASGI wrapper counting the body bytes the application pulled from the client."""

    def __init__(self, app):
        self.app, self.body_bytes = app, 0

    async def __call__(self, scope, receive, send):
        async def counted():
            message = await receive()
            self.body_bytes += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


@pytest.mark.parametrize("path", ["/v1/audio/speech", "/v1/chat/completions", "/v1/audio/voices"])
def test_an_unauthenticated_body_is_refused_unread(tmp_path, path):
    counting = CountingReceive(full_app(tmp_path, api_keys=(KEY,), max_body_bytes=32 * 1024 * 1024))
    body = b'{"model": "' + b"x" * 10_000_000 + b'"}'
    response = TestClient(counting).post(path, content=body, headers={"Authorization": "Bearer wrong",
                                                                      "content-type": "application/json"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert counting.body_bytes == 0
    counting.body_bytes = 0
    TestClient(counting).post("/v1/audio/speech", content=b'{"model": 5}', headers={**AUTH, "content-type": "application/json"})
    assert counting.body_bytes > 0  # the counter does see a body the application reads


def test_failed_key_checks_are_limited_per_address(tmp_path):
    app = full_app(tmp_path, api_keys=(KEY,), auth_failures_per_minute=3)
    attacker = TestClient(app, client=("203.0.113.9", 4000))
    statuses = [attacker.get("/v1/models", headers={"Authorization": f"Bearer guess{i}"}).status_code for i in range(4)]
    assert statuses == [401, 401, 401, 429]
    refused = attacker.get("/v1/models", headers=AUTH)  # a blocked address is not even asked for its key
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "auth_rate_limit_exceeded"
    assert TestClient(app, client=("198.51.100.7", 4000)).get("/v1/models", headers=AUTH).status_code == 200


def test_without_keys_only_loopback_hosts_and_own_origins_pass(tmp_path):
    app = full_app(tmp_path, allowed_origins=("https://studio.example",))
    local = TestClient(app, base_url="http://127.0.0.1:8080")
    assert local.get("/v1/models").status_code == 200
    for host in ("evil.example", "evil.example:8080", "127.0.0.1.evil.example", "[::1", "localhost:x"):
        response = local.get("/v1/models", headers={"host": host})
        assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden_host", host
    for host in ("localhost:8080", "[::1]:8080", "127.0.0.2"):
        assert local.get("/v1/models", headers={"host": host}).status_code == 200, host
    for origin, status in (("http://127.0.0.1:8080", 200), ("https://studio.example", 200), ("http://evil.example", 403),
                           ("http://127.0.0.1:9999", 403), ("null", 403)):
        response = local.post("/v1/audio/speech", json=SPEECH, headers={"origin": origin})
        assert response.status_code == status, origin
    assert local.get("/", headers={"origin": "http://evil.example"}).status_code == 403


def test_with_keys_the_websocket_checks_its_origin(tmp_path):
    from starlette.testclient import WebSocketDenialResponse, httpx

    client = TestClient(full_app(tmp_path, api_keys=(KEY,)))  # its WebSocket requests say Host: testserver
    headers = {"origin": "http://evil.example", **AUTH}
    # The handshake is refused with an HTTP answer in OpenAI's shape (the ASGI WebSocket denial response).
    with pytest.raises(WebSocketDenialResponse) as refused:
        with client.websocket_connect("/v1/realtime", headers=headers):
            pass
    assert refused.value.status_code == 403 and refused.value.json()["error"]["code"] == "forbidden_origin"
    with pytest.raises(WebSocketDenialResponse) as unauthenticated:
        with client.websocket_connect("/v1/realtime", headers={"origin": "http://testserver"}):
            pass
    assert unauthenticated.value.status_code == 401 and "API key" in unauthenticated.value.json()["error"]["message"]
    with pytest.raises(WebSocketDenialResponse) as two_keys:  # which one would count is ambiguous: neither does
        with client.websocket_connect("/v1/realtime", headers=httpx.Headers([("authorization", "Bearer wrong"),
                                                                             ("authorization", f"Bearer {KEY}")])):
            pass
    assert two_keys.value.status_code == 401 and "send one Authorization" in two_keys.value.json()["error"]["message"]
    # HTTP with a key from another origin stays allowed (server-side OpenAI clients send none, browsers' need CORS)
    assert client.get("/v1/models", headers=headers).status_code == 200


def test_keys_of_one_name_share_voices_across_rotation(tmp_path):
    app = full_app(tmp_path, api_keys=("alice:sk-1", "alice:sk-2", "bob:sk-3"))
    client = TestClient(app)

    def as_key(key: str) -> dict:
        return {"Authorization": f"Bearer {key}"}

    uploaded = client.post("/v1/audio/voices", headers=as_key("sk-1"), files={"file": ("me.wav", wav_bytes(1.0))},
                           data={"transcript": "我的声音"})
    assert uploaded.status_code == 201, uploaded.text
    voice = uploaded.json()["id"]

    def ids(key: str) -> list[str]:
        return [v["id"] for v in client.get("/v1/audio/voices", headers=as_key(key)).json()["data"] if v["type"] == "uploaded"]

    assert ids("sk-1") == ids("sk-2") == [voice] and ids("sk-3") == []
    assert client.delete(f"/v1/audio/voices/{voice}", headers=as_key("sk-3")).status_code == 404
    assert client.delete(f"/v1/audio/voices/{voice}", headers=as_key("sk-2")).status_code == 200


def test_speech_sse_and_the_rate_from_the_stream(tmp_path):
    client = TestClient(one_router_app(speech.router, state(tmp_path)))
    events = client.post("/v1/audio/speech", json={**SPEECH, "stream_format": "sse"}).text.split("\n\n")
    assert '"speech.audio.done"' in events[-2]
    first = events[0].removeprefix("data: ")
    import json

    pcm = np.frombuffer(base64.b64decode(json.loads(first)["audio"]), "<i2")
    assert pcm.size == 512 and abs(pcm[0] / 32767 - 0.1) < 1e-3


def test_openai_voice_names_speak_with_a_preset(tmp_path):
    fake = FakeTriton()
    gateway = state(tmp_path, fake)
    speaking = TestClient(one_router_app(speech.router, gateway))
    assert speaking.post("/v1/audio/speech", json={**SPEECH, "voice": "alloy"}).status_code == 200
    assert fake.calls[-1][1]["SPEAKER"][0] == b"Tingting"
    TestClient(one_router_app(chat.router, gateway)).post(
        "/v1/chat/completions", json={**CHAT, "modalities": ["audio"], "audio": {"voice": "shimmer"}})
    assert fake.calls[-1][1]["SPEAKER"][0] == b"Tingting"
    listed = TestClient(one_router_app(voices.router, gateway)).get("/v1/audio/voices").json()["data"]
    aliases = {v["id"]: v["preset"] for v in listed if v["type"] == "alias"}
    assert {"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse"} <= set(aliases)
    assert set(aliases.values()) == {"Tingting"}


def test_an_alias_table_must_name_presets(tmp_path):
    table = tmp_path / "aliases.json"
    table.write_text('{"alloy": "Nobody"}')
    with pytest.raises(ValueError, match="must name one of the presets"):
        state(tmp_path, voice_aliases=table)
    table.write_text('{"alloy": "Tingting2"}')
    gateway = state(tmp_path, voice_aliases=table, preset_voices=("Tingting", "Tingting2"))
    assert gateway.voice_aliases == {"alloy": "Tingting2"}
