"""The HTTP guard against a stand-in upstream (an aiohttp app on loopback): what it refuses, what it passes through
unchanged (streamed responses included), and readiness from the supervisor's view."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from aiohttp import web

from stepaudio_server.body_check import GENERATE, INFER, OTHER, BodyCheck, deeper_than, refusal
from stepaudio_server.http_guard import ADMIN_HEADER, GuardLimits, HttpGuard
from stepaudio_server.launcher import free_port
from stepaudio_server.model_facts import InputFact, ModelFacts, generate_refusal


@pytest.mark.parametrize(
    "text, depth",
    [(b"{}", 1), (b'{"a":[[1,2],[3]]}', 3), (b'{"TEXT":"[[[[{{{{"}', 1), (b'{"a":"\\"[[[\\"","b":[[]]}', 3),
     (b"[" * 900 + b"]" * 900, 900), (b"12", 0)],
)
def test_depth_counts_structure_not_text(text, depth):
    import orjson

    value = orjson.loads(text)
    assert not deeper_than(value, depth) and (depth == 0 or deeper_than(value, depth - 1))


def _header(*sizes: int, outputs: str = "") -> bytes:
    inputs = ",".join(f'{{"name":"I{i}","shape":[{n}],"datatype":"UINT8","parameters":{{"binary_data_size":{n}}}}}'
                      for i, n in enumerate(sizes))
    return f'{{"inputs":[{inputs}]{outputs}}}'.encode()


@pytest.mark.parametrize("body, check, why", [
    (b'{"a":' + b"[" * 2000, BodyCheck(GENERATE, None, 32), "nesting deeper than 32"),  # orjson's bound: 1024
    (b'{"a":' + b"[" * 2000, BodyCheck(INFER, None, 32), "nesting deeper than 32"),
    (b'{"a":' + b"[" * 40 + b"]" * 40 + b"}", BodyCheck(GENERATE, None, 32), "nesting deeper than 32"),
    (b'"\\' * 5000, BodyCheck(GENERATE, None, 32), "not valid JSON"),
    (b'{"a":"\xff"}', BodyCheck(GENERATE, None, 32), "not valid JSON"),
    (b"[1]", BodyCheck(GENERATE, None, 32), "must be an object"),
    (_header(4) + b"abc", BodyCheck(INFER, len(_header(4)), 32), "add up to 4 bytes but 3"),
    (_header(2, 2) + b"abcd", BodyCheck(INFER, len(_header(2, 2)), 32), None),
    (_header(4) + b"abcd", BodyCheck(INFER, None, 32), "not valid JSON"),  # no header: the whole body is JSON
    (_header(0), BodyCheck(INFER, 0, 32), "not valid JSON"),  # Triton may read 0 as 'no binary part'
    (_header(1, outputs=',"outputs":[{"name":"O","parameters":{"classification":1e9}}]') + b"x",
     BodyCheck(INFER, len(_header(1, outputs=',"outputs":[{"name":"O","parameters":{"classification":1e9}}]')), 32),
     "classification"),
    (b'{"inputs":[{"name":"I","parameters":{"binary_data_size":true}}]}', BodyCheck(INFER, None, 32),
     "non-negative integer"),
    (b"[[1]]", BodyCheck(OTHER, None, 32), None),
    # Triton 2.51 crashes (SIGSEGV) on one JSON string of ~8 MB, in any endpoint: keys and values are bounded.
    (b'{"TEXT":"' + b"x" * 2000 + b'"}', BodyCheck(GENERATE, None, 32, max_string_bytes=1000), "longer than 1000"),
    (b'{"TEXT":["' + "字".encode() * 400 + b'"]}', BodyCheck(GENERATE, None, 32, max_string_bytes=1000),
     "longer than 1000"),  # 400 characters, 1200 bytes
    (b'{"' + b"k" * 2000 + b'":1}', BodyCheck(GENERATE, None, 32, max_string_bytes=1000), "longer than 1000"),
    (b'"' + b"x" * 2000 + b'"', BodyCheck(OTHER, None, 32, max_string_bytes=1000), "longer than 1000"),
    (b'{"TEXT":"' + b"x" * 1000 + b'"}', BodyCheck(GENERATE, None, 32, max_string_bytes=1000), None),
    (b"{" + b",".join(b'"%d":0' % i for i in range(1025)) + b"}", BodyCheck(GENERATE, None, 32), "more than 1024"),
    # Counted before the parse: many containers (the 21 M empty lists of the front-door test, smaller here).
    (b'{"a":[' + b"[]," * 100 + b'[]]}', BodyCheck(GENERATE, None, 32, max_containers=100), "more than 100 arrays"),
    (b'{"a":[' + b"[]," * 97 + b'[]]}', BodyCheck(GENERATE, None, 32, max_containers=100), None),
    (_header(4) + b"[[[[", BodyCheck(INFER, len(_header(4)), 32, max_containers=8), None),  # binary part not counted
])
def test_the_json_triton_parses_is_the_json_checked(body, check, why):
    found = refusal(body, check)
    assert (found is None) if why is None else (found is not None and why in found), found


class Upstream:
    """A stand-in for Triton's HTTP endpoint: echoes what reached it; ``/stream`` answers in three chunks."""

    def __init__(self):
        self.port = free_port()
        self.seen: list[tuple[str, bytes]] = []
        self.headers: list[dict[str, str]] = []
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _run(self, ready):
        async def echo(request):
            body = await request.read()
            self.seen.append((request.path_qs, body))
            self.headers.append(dict(request.headers))
            return web.json_response({"path": request.path_qs, "bytes": len(body),
                                      "accept_encoding": request.headers.get("Accept-Encoding")})

        async def stream(request):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for i in range(3):
                await response.write(f"data: {i}\n\n".encode())
            await response.write_eof()
            return response

        async def slow(request):
            await asyncio.sleep(1.5)
            return web.json_response({})

        async def failing(request):
            # Triton's parse error (TritonJson reports it as INTERNAL) versus a model's own internal error.
            message = ("Unable to parse 'TEXT': attempt to access JSON non-string as string"
                       if request.match_info["model"] == "parse_fail" else "internal error: RuntimeError: boom")
            return web.json_response({"error": message}, status=500)

        async def main():
            app = web.Application(client_max_size=1 << 30)
            app.router.add_route("*", "/v2/models/{model:(parse|model)_fail}/{action}", failing)
            app.router.add_route("*", "/stream", stream)
            app.router.add_route("*", "/slow", slow)
            app.router.add_route("*", "/{tail:.*}", echo)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            ready.set()
            await asyncio.Event().wait()

        asyncio.run(main())


@pytest.fixture(scope="module")
def guarded():
    upstream = Upstream()
    down: dict[str, str] = {}
    guard = HttpGuard(f"http://127.0.0.1:{upstream.port}", "127.0.0.1", free_port(), GuardLimits(max_body_bytes=4096),
                      down_models=lambda: dict(down), internal_models=lambda: {"flow_decoder"}).start()
    yield guard, upstream, down
    guard.stop()


def call(guard, path, body=None, headers=None):
    request = urllib.request.Request(f"http://127.0.0.1:{guard.port}{path}", data=body, headers=headers or {},
                                     method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_requests_pass_through_unchanged(guarded):
    guard, upstream, _ = guarded
    status, body = call(guard, "/v2/models/tts/infer?x=1", b'{"inputs":[]}')
    assert status == 200 and json.loads(body) == {"path": "/v2/models/tts/infer?x=1", "bytes": 13, "accept_encoding": "identity"}
    assert upstream.seen[-1] == ("/v2/models/tts/infer?x=1", b'{"inputs":[]}')


def test_the_client_alone_chooses_the_response_encoding(guarded):
    """A client that asks for no compression (perf_analyzer's libcurl) must not get a gzip body it cannot read."""
    guard, _, _ = guarded
    connection = http.client.HTTPConnection("127.0.0.1", guard.port, timeout=10)
    connection.putrequest("POST", "/v2/models/tts/infer", skip_accept_encoding=True)
    connection.putheader("Content-Length", "2")
    connection.endheaders(b"{}")
    assert json.loads(connection.getresponse().read())["accept_encoding"] is None
    connection.close()
    sent = call(guard, "/v2/models/tts/infer", b"{}", {"Accept-Encoding": "deflate"})[1]
    assert json.loads(sent)["accept_encoding"] == "deflate"


def test_streamed_responses_arrive_whole(guarded):
    status, body = call(guarded[0], "/stream", b"{}")
    assert status == 200 and body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


def test_deep_nesting_and_big_bodies_never_reach_upstream(guarded):
    guard, upstream, _ = guarded
    seen = len(upstream.seen)
    status, body = call(guard, "/v2/models/tts/generate_stream", b'{"TEXT":' + b"[" * 40 + b"]" * 40 + b"}")
    assert status == 400 and b"nesting deeper than 32" in body
    status, body = call(guard, "/v2/models/tts/infer", b"x" * 5000)
    assert status == 413
    assert len(upstream.seen) == seen


def test_binary_requests_are_checked_in_their_json_header_only(guarded):
    guard, upstream, _ = guarded
    header = b'{"inputs":[{"name":"A","shape":[1,40],"datatype":"UINT8","parameters":{"binary_data_size":40}}]}'
    status, _ = call(guard, "/v2/models/tts/infer", header + b"[" * 40,
                     {"Inference-Header-Content-Length": str(len(header))})
    assert status == 200, "brackets in binary tensor data are not JSON"


def test_internal_models_are_not_inferable(guarded):
    guard, upstream, _ = guarded
    for path in ("/v2/models/flow_decoder/infer", "/v2/models/flow_decoder/versions/1/infer"):
        status, body = call(guard, path, b"{}")
        assert status == 403 and b"internal" in body
    assert call(guard, "/v2/models/flow_decoder")[0] == 200, "metadata stays readable"


def test_readiness_reports_models_being_healed(guarded):
    guard, _, down = guarded
    assert call(guard, "/v2/health/ready")[0] == 200
    down["tts"] = "stub of instance tts_0_1 died; reloading"
    try:
        status, body = call(guard, "/v2/health/ready")
        assert status == 400 and b"tts_0_1 died" in body
        assert call(guard, "/v2/models/tts/ready")[0] == 400
        assert call(guard, "/v2/models/tts_llm/ready")[0] == 200
    finally:
        down.clear()


def raw(guard, path: str, headers: list[tuple[str, str]], body: bytes) -> tuple[int, bytes]:
    """One request with exactly these headers (duplicates kept, no Content-Length added)."""
    connection = http.client.HTTPConnection("127.0.0.1", guard.port, timeout=10)
    try:
        connection.putrequest("POST", path, skip_accept_encoding=True)
        for key, value in headers:
            connection.putheader(key, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("headers, body, why", [
    ([("Content-Length", "2"), ("Inference-Header-Content-Length", "2"), ("Inference-Header-Content-Length", "0")],
     b"{}", b"repeated Inference-Header-Content-Length"),
    ([("Content-Length", "20"), ("Content-Encoding", "gzip")], __import__("gzip").compress(b"{}")[:20],
     b"Content-Encoding"),
    ([("Content-Length", "2"), ("Content-Encoding", "identity, deflate")], b"{}", b"Content-Encoding"),
    ([("Content-Length", "2"), ("Inference-Header-Content-Length", "+2")], b"{}", b"decimal integer"),
    # Refused by aiohttp's own HTTP parser (llhttp) already, or by the guard: either way a 400 and nothing forwarded.
    ([("Content-Length", "2"), ("Content-Length", "2")], b"{}", b""),
    ([("Content-Length", "7"), ("Transfer-Encoding", "chunked")], b"2\r\n{}\r\n0\r\n\r\n", b""),
    ([("Transfer-Encoding", "gzip, chunked")], b"2\r\n{}\r\n0\r\n\r\n", b""),
    ([("Content-Length", "2"), ("Inference-Header-Content-Length", "3")], b"{}", b"exceeds the body"),
])
def test_ambiguous_framing_is_refused(guarded, headers, body, why):
    guard, upstream, _ = guarded
    seen = len(upstream.seen)
    status, reply = raw(guard, "/v2/models/tts/infer", headers, body)
    assert status == 400 and why in reply, reply
    if why:  # the guard's own refusal: a JSON error body, as Triton's
        assert "error" in json.loads(reply), reply
    assert len(upstream.seen) == seen


@pytest.mark.parametrize("encoding, body", [("deflate", b"\x00garbage"), ("gzip", b"\x1f\x8bgarbage"),
                                            ("br", b"garbage"), ("gzip", __import__("gzip").compress(bytes(1 << 20)))])
def test_a_compressed_body_is_refused_by_the_guard_and_never_inflated(guarded, caplog, encoding, body):
    """aiohttp's parser used to inflate the body as it arrived: broken data raised in the parser (a traceback in the
    log, or aiohttp's own plain-text 400 the fuzz campaign saw) and a bomb was inflated before the refusal. Now the
    body is never decoded: the guard's JSON 400, nothing forwarded, nothing logged by aiohttp."""
    guard, upstream, _ = guarded
    seen = len(upstream.seen)
    with socket.create_connection(("127.0.0.1", guard.port), timeout=10) as connection:  # headers and body at once
        connection.sendall(f"POST /v2/models/tts/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                           f"Content-Encoding: {encoding}\r\n\r\n".encode() + body)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.endswith(b"}"):
            if not (data := connection.recv(4096)):
                break
            reply += data
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and "Content-Encoding" in json.loads(payload)["error"], reply
    assert len(upstream.seen) == seen
    time.sleep(0.2)  # the connection's handler ends after the answer
    assert not [r for r in caplog.records if r.name.startswith("aiohttp")], [r.getMessage() for r in caplog.records]


def test_the_length_header_is_refused_where_triton_parses_the_whole_body(guarded):
    """The crash of issue #23: generate_stream parses the whole body whatever the header says."""
    guard, upstream, _ = guarded
    seen = len(upstream.seen)
    nested = b'{"TEXT":' + b"[" * 1000 + b"]" * 1000 + b"}"
    status, reply = call(guard, "/v2/models/tts/generate_stream", nested, {"Inference-Header-Content-Length": "0"})
    assert status == 400 and b"infer requests only" in reply
    status, reply = call(guard, "/v2/models/tts/generate", nested)
    assert status == 400 and b"nesting" in reply
    assert len(upstream.seen) == seen


def test_chunked_bodies_are_checked_and_forwarded_with_a_length(guarded):
    guard, upstream, _ = guarded
    status, reply = raw(guard, "/v2/models/tts/infer", [("Transfer-Encoding", "chunked")], b"2\r\n{}\r\n0\r\n\r\n")
    assert status == 200 and json.loads(reply)["bytes"] == 2
    status, reply = raw(guard, "/v2/models/tts/infer", [("Transfer-Encoding", "chunked")],
                        b"5\r\n[[[[[\r\n0\r\n\r\n")
    assert status == 400


def test_the_operator_key_is_swapped_for_the_upstream_key():
    upstream = Upstream()
    guard = HttpGuard(f"http://127.0.0.1:{upstream.port}", "127.0.0.1", free_port(), GuardLimits(max_body_bytes=4096),
                      down_models=dict, internal_models=set, admin_key="operator-key-0123456789",
                      upstream_admin_key="ephemeral-key").start()
    try:
        for offered in ("operator-key-0123456789", "wrong", None):
            call(guard, "/v2/repository/index", b"{}", {ADMIN_HEADER: offered} if offered else {})
        assert [h.get(ADMIN_HEADER) for h in upstream.headers] == ["ephemeral-key", None, None]
    finally:
        guard.stop()


def test_draining_refuses_new_requests_and_waits_for_running_ones(guarded):
    guard, _, _ = guarded
    slow = threading.Thread(target=lambda: call(guard, "/slow", b"{}"))
    slow.start()
    time.sleep(0.3)
    started = time.monotonic()
    try:
        cut = guard.drain(10)
        assert cut == 0 and 0.3 < time.monotonic() - started < 5, "drain waited for the running request"
        status, reply = call(guard, "/v2/health/ready")
        assert status == 503 and b"shutting down" in reply
    finally:
        guard.draining = False
        slow.join()


# tts_stream's inputs, as its rendered config declares them (max_batch_size 0, decoupled).
_STREAM_FACTS = ModelFacts.from_config({
    "max_batch_size": 0, "model_transaction_policy": {"decoupled": True},
    "input": [{"name": "TEXT", "data_type": "TYPE_STRING", "dims": ["1"], "optional": True},
              {"name": "MAX_NEW_TOKENS", "data_type": "TYPE_INT32", "dims": [1], "optional": True},
              {"name": "TEMPERATURE", "data_type": "TYPE_FP32", "dims": [1], "optional": True},
              {"name": "PROMPT_AUDIO", "data_type": "TYPE_FP32", "dims": [-1], "optional": True},
              {"name": "REPLY_AUDIO", "data_type": "TYPE_BOOL", "dims": [1], "optional": True}]})
_BATCHING_FACTS = ModelFacts.from_config({
    "max_batch_size": 4, "parameters": {"access": {"string_value": "internal"}},
    "input": [{"name": "AUDIO", "data_type": "TYPE_FP32", "dims": [-1]}]})


def test_model_facts_read_the_loaded_config():
    assert _STREAM_FACTS.decoupled and not _STREAM_FACTS.internal
    assert _STREAM_FACTS.inputs[0] == InputFact("TEXT", "TYPE_STRING", 1, True)
    assert _BATCHING_FACTS.internal and not _BATCHING_FACTS.decoupled
    assert _BATCHING_FACTS.inputs == (InputFact("AUDIO", "TYPE_FP32", 2, False),)  # the batch dimension counts


@pytest.mark.parametrize("document, why", [
    ({"TEXT": "你好", "MAX_NEW_TOKENS": 20, "TEMPERATURE": 1, "PROMPT_AUDIO": [0.5, 1], "REPLY_AUDIO": True}, None),
    ({"TEXT": ["hi"], "parameters": {"seed": 1, "stream": False}, "stepaudio_error_codes": True}, None),
    ({"TEXT": {"a": 1}}, "'TEXT' must hold STRING"),
    ({"TEXT": "hi", "MAX_NEW_TOKENS": ""}, "'MAX_NEW_TOKENS' must hold INT32"),
    ({"MAX_NEW_TOKENS": 1.5}, "'MAX_NEW_TOKENS' must hold INT32"),
    ({"MAX_NEW_TOKENS": True}, "'MAX_NEW_TOKENS' must hold INT32"),
    ({"TEMPERATURE": "hot"}, "'TEMPERATURE' must hold FP32"),
    ({"REPLY_AUDIO": 1}, "'REPLY_AUDIO' must hold BOOL"),
    ({"PROMPT_AUDIO": [[0.5]]}, "'PROMPT_AUDIO' nests deeper"),
    ({"PROMPT_AUDIO": [0.5, None]}, "'PROMPT_AUDIO' must hold FP32"),
    ({"parameters": {"a": [1]}}, "'parameters' must be an object"),
    ({"parameters": 3}, "'parameters' must be an object"),
    ({"NOT_AN_INPUT": {"a": 1}}, "'NOT_AN_INPUT' is not an input"),
])
def test_generate_bodies_must_fit_the_models_inputs(document, why):
    found = generate_refusal(document, _STREAM_FACTS.inputs)
    assert (found is None) if why is None else (found is not None and why in found), found


def test_generate_needs_the_required_inputs():
    assert "missing required input(s): AUDIO" in generate_refusal({}, _BATCHING_FACTS.inputs)
    assert generate_refusal({"AUDIO": [[0.1, 0.2]]}, _BATCHING_FACTS.inputs) is None


@pytest.fixture(scope="module")
def guarded_with_facts():
    upstream = Upstream()
    facts = {"tts_stream": _STREAM_FACTS, "parse_fail": ModelFacts(False, False, ()),
             "model_fail": ModelFacts(False, False, ())}
    guard = HttpGuard(f"http://127.0.0.1:{upstream.port}", "127.0.0.1", free_port(), GuardLimits(max_body_bytes=4096),
                      down_models=dict, internal_models=set, model_facts=lambda: facts).start()
    yield guard, upstream
    guard.stop()


def _raw(guard, method, path, body=b"") -> tuple[int, bytes, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", guard.port, timeout=10)
    connection.request(method, path, body=body, headers={"Content-Length": str(len(body))})
    response = connection.getresponse()
    answer = response.status, response.read(), dict(response.headers)
    connection.close()
    return answer


@pytest.mark.parametrize("method", ["HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_methods_triton_does_not_serve_get_a_json_405(guarded_with_facts, method):
    guard, upstream = guarded_with_facts
    before = len(upstream.seen)
    status, body, headers = _raw(guard, method, "/V2/MODELS/FLOW_DECODER")
    assert status == 405 and headers["Allow"] == "GET, POST" and len(upstream.seen) == before
    if method != "HEAD":
        assert "is not supported" in json.loads(body)["error"]


def test_infer_on_a_decoupled_model_is_a_400(guarded_with_facts):
    guard, upstream = guarded_with_facts
    before = len(upstream.seen)
    status, body, _ = _raw(guard, "POST", "/v2/models/tts_stream/versions/1/infer", b'{"inputs": []}')
    assert status == 400 and "decoupled" in json.loads(body)["error"] and len(upstream.seen) == before
    status, _, _ = _raw(guard, "POST", "/v2/models/tts_stream/generate_stream", b'{"TEXT": "hi"}')
    assert status == 200 and upstream.seen[-1][0] == "/v2/models/tts_stream/generate_stream"


@pytest.mark.parametrize("path, body, why", [
    ("/v2/models/tts_stream/versions/1/generate", b'{"TEXT":{"a":1},"SPEAKER":"Tingting"}', "'TEXT'"),
    ("/v2/models/tts_stream/generate_stream", b'{"TEXT": "hi", "MAX_NEW_TOKENS": ""}', "'MAX_NEW_TOKENS'"),
    ("/v2/models/tts_stream/generate_stream", b"", "empty body"),
    ("/v2/models/unknown_model/infer", b"", "empty body"),
])
def test_generate_bodies_that_do_not_fit_are_refused_before_triton(guarded_with_facts, path, body, why):
    guard, upstream = guarded_with_facts
    before = len(upstream.seen)
    status, answer, _ = _raw(guard, "POST", path, body)
    assert status == 400 and why in json.loads(answer)["error"] and len(upstream.seen) == before


def test_only_tritons_parse_errors_turn_from_500_into_400(guarded_with_facts):
    guard, _ = guarded_with_facts
    status, body, _ = _raw(guard, "POST", "/v2/models/parse_fail/generate", b'{"TEXT": "hi"}')
    assert status == 400 and "could not be parsed: Unable to parse" in json.loads(body)["error"]
    status, body, _ = _raw(guard, "POST", "/v2/models/model_fail/generate", b'{"TEXT": "hi"}')
    assert status == 500 and json.loads(body) == {"error": "internal error: RuntimeError: boom"}
    status, body, _ = _raw(guard, "GET", "/v2/models/parse_fail/config")
    assert status == 500  # not a client body: passed through as it is
