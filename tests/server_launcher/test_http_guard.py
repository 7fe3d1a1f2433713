"""The HTTP guard against a stand-in upstream (an aiohttp app on loopback): what it refuses, what it passes through
unchanged (streamed responses included), and readiness from the supervisor's view."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import urllib.error
import urllib.request

import pytest
from aiohttp import web

from stepaudio_server.http_guard import GuardLimits, HttpGuard, max_json_depth
from stepaudio_server.launcher import free_port


@pytest.mark.parametrize(
    "text, depth",
    [(b"{}", 1), (b'{"a":[[1,2],[3]]}', 3), (b'{"TEXT":"[[[[{{{{"}', 1), (b'{"a":"\\"[[[\\"","b":[[]]}', 3),
     (b"[" * 50_000 + b"]" * 50_000, 50_000), (b"", 0), (b"12", 0)],
)
def test_max_json_depth_counts_structure_not_text(text, depth):
    assert max_json_depth(text) == depth


class Upstream:
    """A stand-in for Triton's HTTP endpoint: echoes what reached it; ``/stream`` answers in three chunks."""

    def __init__(self):
        self.port = free_port()
        self.seen: list[tuple[str, bytes]] = []
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _run(self, ready):
        async def echo(request):
            body = await request.read()
            self.seen.append((request.path_qs, body))
            return web.json_response({"path": request.path_qs, "bytes": len(body),
                                      "accept_encoding": request.headers.get("Accept-Encoding")})

        async def stream(request):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for i in range(3):
                await response.write(f"data: {i}\n\n".encode())
            await response.write_eof()
            return response

        async def main():
            app = web.Application(client_max_size=1 << 30)
            app.router.add_route("*", "/stream", stream)
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
