"""The HTTP guard: the launcher's public HTTP endpoint, a reverse proxy in front of Triton's own.

Why it exists (see docs/hardening.md):
- Triton 2.51's HTTP front end crashes the whole server (SIGSEGV, stack overflow while parsing) on a ~100 kB body
  of deeply nested JSON sent to ``generate_stream``; it has no option that bounds nesting or body size. The guard
  checks both before a byte reaches Triton.
- Triton's readiness does not see a dead python stub (2.51 has no stub restart and keeps answering 200). The guard
  answers ``/v2/health/ready`` and the model ready endpoints from the supervisor's view as well.
- Models whose config says ``parameters { key: "access" value: { string_value: "internal" } }`` (the decoders,
  which the native GPU backends cannot validate) are not inferable from outside.

Everything else is passed through unchanged, streamed in both directions' response side (SSE of
``generate_stream`` included). Built on aiohttp (server and client); Triton itself stays on loopback.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

# One JSON string literal (escapes included): removed before counting brackets, so "[[[" inside text is no nesting.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPEN = np.zeros(256, np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1

# /v2/models/<name>[/versions/<v>]/<action>
_MODEL_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/[^/]+)?(?:/(?P<action>[^/]+))?$")
_INFER_ACTIONS = {"infer", "generate", "generate_stream"}
# Hop-by-hop headers are per connection (RFC 9110 §7.6.1); the proxy sets its own lengths.
_HOP_HEADERS = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                "transfer-encoding", "upgrade", "content-length", "host"}


def max_json_depth(data: bytes) -> int:
    """Deepest nesting of arrays/objects in a JSON text, without parsing it (no recursion, numpy speed)."""
    stripped = _JSON_STRING.sub(b'""', data)
    if not stripped:
        return 0
    depth = np.cumsum(_OPEN[np.frombuffer(stripped, np.uint8)], dtype=np.int64)
    return int(depth.max(initial=0))


@dataclass
class GuardLimits:
    max_body_bytes: int = 64 * 1024 * 1024  # a 10-minute 16 kHz float32 prompt as binary tensor is ~38 MB
    max_json_depth: int = 32  # a tensor of 8 dims inside {"inputs":[{"data":...}]} needs 11
    upstream_timeout_s: float = 3600.0  # long streams are legitimate; Triton enforces its own per-model limits

    def validate(self) -> None:
        if self.max_body_bytes < 1024 or self.max_json_depth < 8:
            raise ValueError("max_body_bytes must be ≥ 1024 and max_json_depth ≥ 8")


def _error(status: int, message: str) -> web.Response:
    # Triton's own error body shape, so tritonclient shows the message.
    return web.Response(status=status, text=json.dumps({"error": message}), content_type="application/json")


class HttpGuard:
    """Runs an aiohttp server on its own thread and event loop; ``start()`` returns once it listens."""

    def __init__(
        self,
        upstream: str,
        host: str,
        port: int,
        limits: GuardLimits,
        down_models: Callable[[], dict[str, str]],
        internal_models: Callable[[], set[str]],
    ):
        limits.validate()
        self.upstream, self.host, self.port, self.limits = upstream.rstrip("/"), host, port, limits
        self.down_models, self.internal_models = down_models, internal_models
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self, timeout_s: float = 10.0) -> HttpGuard:
        self._thread = threading.Thread(target=self._run, name="http-guard", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise RuntimeError("HTTP guard did not start")
        if self._failure is not None:
            raise RuntimeError(f"HTTP guard failed to start: {self._failure}") from self._failure
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._thread = None

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._failure = exc
            self._started.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self._session = ClientSession(
            connector=TCPConnector(limit=0, force_close=False),
            timeout=ClientTimeout(total=self.limits.upstream_timeout_s, sock_connect=10),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=self.limits.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
            self._started.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()
            await self._session.close()

    # -- requests --------------------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        match = _MODEL_PATH.match(path)
        model, action = (match["name"], match["action"]) if match else (None, None)

        down = self.down_models()
        if path == "/v2/health/ready" and down:
            return _error(400, "not ready: " + "; ".join(f"{m}: {why}" for m, why in sorted(down.items())))
        if action == "ready" and model in down:
            return _error(400, f"model {model} is not ready: {down[model]}")
        if action in _INFER_ACTIONS and model in self.internal_models():
            return _error(403, f"model {model} is internal; send requests to the public models that feed it")

        body = b""
        if request.can_read_body:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return _error(413, f"request body exceeds {self.limits.max_body_bytes} bytes")
            refusal = self._check_json(request, body)
            if refusal is not None:
                return refusal
        return await self._forward(request, body)

    def _check_json(self, request: web.Request, body: bytes) -> web.Response | None:
        header_length = request.headers.get("Inference-Header-Content-Length")
        if header_length is not None:
            try:
                json_part = body[: int(header_length)]
            except ValueError:
                return _error(400, "Inference-Header-Content-Length must be an integer")
        else:
            json_part = body
        if json_part and max_json_depth(json_part) > self.limits.max_json_depth:
            return _error(400, f"JSON nesting deeper than {self.limits.max_json_depth} levels")
        return None

    async def _forward(self, request: web.Request, body: bytes) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        url = self.upstream + request.path_qs
        try:
            # Only the client's own Accept-Encoding goes upstream: aiohttp would add gzip, and a client that never
            # asked for it (perf_analyzer's libcurl) cannot read the compressed body passed through.
            async with self._session.request(request.method, url, headers=headers, data=body or None,
                                             skip_auto_headers=("Accept-Encoding",)) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for key, value in upstream.headers.items():
                    if key.lower() not in _HOP_HEADERS:
                        response.headers[key] = value
                if upstream.content_length is not None:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (OSError, asyncio.TimeoutError) as exc:
            return _error(503, f"inference server unavailable: {type(exc).__name__}")
