"""Property: whatever JSON (or multipart) a client sends to a route, the gateway answers 2xx or 4xx, never 5xx,
and every refusal is in OpenAI's error shape. Runs against ``create_app`` with a fake Triton (no server)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway.fakes import full_app, wav_bytes

KEY = "sk-fuzz"
AUTH = {"Authorization": f"Bearer {KEY}"}
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


def _fields(names: list[str], values) -> st.SearchStrategy[dict]:
    """Objects whose keys are mostly the route's own field names, with hostile values."""
    return st.dictionaries(st.sampled_from(names) | st.text(max_size=8), values, max_size=len(names) + 1)


speech_values = json_values | st.sampled_from(["step-audio-tts", "tts-1", "Tingting", "你好", "pcm", "wav", "sse", "(RAP)"])
speech_bodies = st.builds(lambda base, extra: {**base, **extra},
                          st.just({"model": "step-audio-tts", "input": "你好", "voice": "Tingting", "response_format": "pcm"}),
                          _fields(["model", "input", "voice", "instructions", "response_format", "speed", "stream_format",
                                   "seed", "temperature", "top_p", "max_new_tokens"], speech_values))
parts = _fields(["type", "text", "input_audio"],
                json_values | st.sampled_from(["text", "input_audio"]) | _fields(["data", "format"], json_values | st.just("AAAA")))
messages = _fields(["role", "content", "audio"],
                   json_values | st.sampled_from(["user", "assistant", "system", "developer"]) | st.lists(parts, max_size=3)
                   | _fields(["id", "transcript"], json_values))
chat_bodies = st.builds(lambda base, extra: {**base, **extra},
                        st.just({"model": "step-audio-chat", "messages": [{"role": "user", "content": "你好"}]}),
                        _fields(["model", "messages", "modalities", "audio", "stream", "max_tokens", "max_completion_tokens",
                                 "temperature", "top_p", "seed"],
                                json_values | st.lists(messages, min_size=1, max_size=3)
                                | st.lists(st.sampled_from(["text", "audio", "video"]), max_size=3)
                                | _fields(["voice", "format"], json_values | st.sampled_from(["Tingting", "wav", "pcm16"])
                                          | _fields(["id"], json_values))))


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    app = full_app(tmp_path_factory.mktemp("fuzz"), api_keys=(KEY,), max_input_chars=200)
    return TestClient(app, raise_server_exceptions=False)


def assert_clean(response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
        assert error["type"].endswith("_error") and (error["param"] is None or isinstance(error["param"], str))


@SETTINGS
@given(body=json_values | speech_bodies)
def test_speech_bodies(client, body):
    assert_clean(client.post("/v1/audio/speech", content=json.dumps(body), headers={**AUTH, "content-type": "application/json"}))


@SETTINGS
@given(body=json_values | chat_bodies)
def test_chat_bodies(client, body):
    assert_clean(client.post("/v1/chat/completions", content=json.dumps(body),
                             headers={**AUTH, "content-type": "application/json"}))


@SETTINGS
@given(raw=st.binary(max_size=200), content_type=st.sampled_from(["application/json", "text/plain", "", "multipart/form-data",
                                                                  "multipart/form-data; boundary=x", "application/x-www-form-urlencoded"]))
def test_raw_bodies_on_every_route(client, raw, content_type):
    for path in ("/v1/audio/speech", "/v1/chat/completions", "/v1/audio/voices"):
        assert_clean(client.post(path, content=raw, headers={**AUTH, "content-type": content_type}))


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(fields=_fields(["transcript", "text", "name"], st.text(max_size=30)),
       audio=st.sampled_from([b"", b"RIFF", b"fLaC\x00\x00", b"\xff\xfb\x90\x00" * 8, None]) | st.binary(max_size=300),
       field=st.sampled_from(["file", "audio_sample", "other"]))
def test_voice_uploads(client, fields, audio, field):
    files = {field: ("v.wav", wav_bytes(0.6) if audio is None else audio)}
    response = client.post("/v1/audio/voices", data=fields, files=files, headers=AUTH)
    assert_clean(response)
    if response.status_code == 201:
        assert client.delete(f"/v1/audio/voices/{response.json()['id']}", headers=AUTH).status_code == 200
