"""Every failure class the fuzz campaign found (docs/fuzzing.md), as the exact request that showed it: each test
sends it and asserts the campaign's invariants for it (an answer within the timeout, no 5xx, a JSON error body for
a 4xx, the service still up and ready). They fail until the owner of that surface fixes the class."""

from __future__ import annotations

import urllib.request

import pytest

from tests.fuzz.conftest import API_KEY
from tests.fuzz.harness import FuzzRequest, judge, send

pytestmark = pytest.mark.server


def _http(surface: str, kind: str, raw: bytes, method: str = "POST") -> FuzzRequest:
    return FuzzRequest(surface, kind, raw, well_framed=True, strict=True, method=method)


CASES = {
    # HEAD on a Triton path through the guard: 500 with an empty body (GET on the same path is a 4xx).
    "guard_head_on_a_model_path": _http("guard", "endpoint", b"HEAD /V2/MODELS/FLOW_DECODER HTTP/1.1\r\n"
                                        b"Host: 127.0.0.1\r\nContent-Length: 0\r\n\r\n", "HEAD"),
    "guard_head_on_a_model_config": _http("guard", "endpoint", b"HEAD /v2/models/ensemble_tts_music/config HTTP/1.1\r\n"
                                          b"Host: 127.0.0.1\r\nContent-Length: 0\r\n\r\n", "HEAD"),
    # infer on a decoupled model: Triton's 501 is passed through (a request the model cannot take is a 4xx).
    "guard_infer_on_a_decoupled_model": _http(
        "guard", "kserve_infer", b"POST /v2/models/tts_stream/versions/1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 14\r\n\r\n" + b'{"inputs": []}'),
    # generate with a non-string TEXT: Triton's own 500 ("attempt to access JSON non-string as string") passes
    # through the guard, unauthenticated.
    "guard_generate_with_an_object_text": _http(
        "guard", "hostile_json", b"POST /v2/models/tts_stream/versions/1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 37\r\n\r\n" + b'{"TEXT":{"a":1},"SPEAKER":"Tingting"}'),
    "guard_generate_stream_with_a_string_count": _http(
        "guard", "generate", b"POST /v2/models/ensemble_tts_music/generate_stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 52\r\n\r\n"
        + b'{"TEXT": "\\u4f60\\u597d\\u3002", "MAX_NEW_TOKENS": ""}'),
    "guard_generate_stream_with_an_empty_body": _http(
        "guard", "random_body", b"POST /v2/models/stream_tokenizer/generate_stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Length: 0\r\n\r\n"),
    # A WebSocket handshake refused (foreign Origin, or two Authorization headers): 403 with an empty body.
    "realtime_refused_origin": FuzzRequest("realtime", "session", ws_headers=(
        ("Sec-WebSocket-Protocol", f"openai-insecure-api-key.{API_KEY}"), ("Origin", "http://evil.example"))),
    "realtime_two_authorization_headers": FuzzRequest("realtime", "session", ws_headers=(
        ("Authorization", "Bearer wrong"), ("Authorization", f"Bearer {API_KEY}"))),
}


def _ready(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except OSError as exc:
        return getattr(exc, "code", 0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_found_request_keeps_the_invariants(fuzz_stack, name):
    request = CASES[name]
    address = fuzz_stack.guard_address if request.surface == "guard" else fuzz_stack.gateway_address
    outcome = send(*address, request)
    assert judge(request, outcome) is None, (outcome.status, outcome.body[:300], request.describe())
    assert fuzz_stack.alive() and not fuzz_stack.restarts()
    assert _ready("http://%s:%d/v2/health/ready" % tuple(fuzz_stack.guard_address)) == 200
    assert _ready("http://%s:%d/health" % tuple(fuzz_stack.gateway_address)) == 200
