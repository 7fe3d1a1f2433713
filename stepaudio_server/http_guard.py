"""The HTTP guard: the launcher's public HTTP endpoint, a reverse proxy in front of Triton's own.

Why it exists (see docs/hardening.md):
- Triton's HTTP front end crashes the whole server (SIGSEGV, stack overflow while parsing) on a ~100 kB body
  of deeply nested JSON (stepaudio_contract/compat.py: http_guard) sent to ``generate_stream``; it has no option that bounds nesting or body size. The guard
  checks both before a byte reaches Triton: the JSON Triton will parse, framed as Triton will frame it
  (``stepaudio_server.body_check``); any framing two parsers could read differently is refused.
- Triton's restricted APIs take their key on Triton's command line (visible in ``ps``): Triton gets an ephemeral
  key per start, and the guard swaps the operator's key (checked here) for it.
- Triton's readiness does not see a dead python stub (stepaudio_contract/compat.py: supervisor). The guard
  answers ``/v2/health/ready`` and the model ready endpoints from the supervisor's view as well.
- Models whose config says ``parameters { key: "access" value: { string_value: "internal" } }`` (the decoders,
  which the native GPU backends cannot validate) are not inferable from outside.
- Nothing the client got wrong may come back as a 5xx (``stepaudio_server.model_facts``): methods other than GET
  and POST get 405, ``infer`` on a decoupled model 400 (Triton: 501), a generate body that does not fit the model's
  inputs 400 naming the field (Triton: 500), and a 500 that is Triton's own parse error becomes 400.

Everything else is passed through unchanged, streamed in both directions' response side (SSE of
``generate_stream`` included). Built on aiohttp (server and client); Triton itself stays on loopback.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web

from stepaudio_server.body_check import GENERATE, INFER, OTHER, BodyCheck, CheckPool, refusal
from stepaudio_server.model_facts import ModelFacts

# /v2/models/<name>[/versions/<v>]/<action>
_MODEL_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/[^/]+)?(?:/(?P<action>[^/]+))?$")
_INFER_ACTIONS = {"infer", "generate", "generate_stream"}
# Hop-by-hop headers are per connection (RFC 9110 §7.6.1); the proxy sets its own lengths.
_HOP_HEADERS = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                "transfer-encoding", "upgrade", "content-length", "host"}
HEADER_LENGTH = "Inference-Header-Content-Length"
ADMIN_HEADER = "stepaudio-admin-key"  # Triton's restricted-API header (the launcher passes it to Triton)
# Set by the guard itself, never taken from a client.
_REWRITTEN = {HEADER_LENGTH.lower(), ADMIN_HEADER, "content-encoding"}
_DIGITS = re.compile(r"^[0-9]{1,12}$")
# Triton's HTTP API is GET and POST only; anything else (HEAD included) Triton answers with a 5xx or no answer.
_METHODS = ("GET", "POST")
# A 500 whose message is one of these comes from Triton's request parsing (TritonJson reports every parse
# failure as INTERNAL), never from a model: the client's body was at fault (docs/hardening.md#the-guard).
_PARSE_ERRORS = re.compile(r"Unable to parse|The document is empty|attempt to access JSON|failed to parse|"
                           r"Invalid value|Missing a name|Missing a colon|Missing a comma|Incorrect hex|"
                           r"Invalid encoding|Terminate parsing|unexpected|The document root")
_MAX_ERROR_BYTES = 64 * 1024


@dataclass
class GuardLimits:
    max_body_bytes: int = 64 * 1024 * 1024  # a 10-minute 16 kHz float32 prompt as binary tensor is ~38 MB
    max_json_depth: int = 32  # a tensor of 8 dims inside {"inputs":[{"data":...}]} needs 11
    max_json_string_bytes: int = 1024 * 1024  # Triton crashes on one JSON string of 8 MB (4 MB survives)
    max_json_object_keys: int = 1024  # ... and on a generate body of 5.6 M keys
    upstream_timeout_s: float = 3600.0  # long streams are legitimate; Triton enforces its own per-model limits
    max_body_bytes_in_flight: int = 256 * 1024 * 1024  # bodies being read/checked/sent at once; beyond: 503
    inline_check_bytes: int = 64 * 1024  # smaller bodies are checked on the event loop (well under 1 ms)
    check_workers: int = 2  # processes that check larger bodies
    check_memory_bytes: int = 3 * 1024 * 1024 * 1024  # address space of one check worker (orjson reserves ~12×)
    max_pending_checks: int = 8  # large bodies waiting for a worker; beyond: 503

    def validate(self) -> None:
        if self.max_body_bytes < 1024 or self.max_json_depth < 8:
            raise ValueError("max_body_bytes must be ≥ 1024 and max_json_depth ≥ 8")
        if self.max_json_depth > 1000:
            raise ValueError("max_json_depth must be ≤ 1000 (the parser's own bound is 1024)")
        if self.max_body_bytes_in_flight < self.max_body_bytes:
            raise ValueError("max_body_bytes_in_flight must hold at least one body of max_body_bytes")
        if self.check_workers < 1 or self.max_pending_checks < 1:
            raise ValueError("check_workers and max_pending_checks must be ≥ 1")


@dataclass(frozen=True)
class RequestRecord:
    """What an operator needs to block a request that preceded a crash."""

    started: float  # time.time()
    method: str
    path: str
    body_bytes: int
    client: str

    def describe(self) -> str:
        stamp = time.strftime("%H:%M:%S", time.gmtime(self.started)) + f".{int(self.started * 1000) % 1000:03d}Z"
        return f"{stamp} {self.client} {self.method} {self.path} ({self.body_bytes} body bytes)"


class RequestRing:
    """The requests in flight and the last ``size`` finished ones (thread-safe: the launcher reads it)."""

    def __init__(self, size: int = 16):
        self._lock = threading.Lock()
        self._in_flight: dict[int, RequestRecord] = {}
        self._finished: collections.deque[RequestRecord] = collections.deque(maxlen=size)
        self._next = 0

    def begin(self, record: RequestRecord) -> int:
        with self._lock:
            self._next += 1
            self._in_flight[self._next] = record
            return self._next

    def end(self, token: int) -> None:
        with self._lock:
            record = self._in_flight.pop(token, None)
            if record is not None:
                self._finished.append(record)

    def in_flight(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._in_flight.values())

    def snapshot(self) -> tuple[list[RequestRecord], list[RequestRecord]]:
        """(in flight, last finished), oldest first."""
        with self._lock:
            return sorted(self._in_flight.values(), key=lambda r: r.started), list(self._finished)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    # Triton's own error body shape, so tritonclient shows the message.
    return web.Response(status=status, text=json.dumps({"error": message}), content_type="application/json",
                        headers=headers)


def _framing_refusal(request: web.Request) -> str | None:
    """Headers two HTTP parsers could read differently, or that would make Triton read another body."""
    headers = request.headers
    if len(headers.getall("Content-Length", [])) > 1:
        return "repeated Content-Length"
    encodings = headers.getall("Transfer-Encoding", [])
    if encodings and ([e.strip().lower() for e in encodings] != ["chunked"] or "Content-Length" in headers):
        return "Transfer-Encoding must be exactly 'chunked', without Content-Length"
    if any(value.strip().lower() != "identity" for value in headers.getall("Content-Encoding", [])):
        # Triton would inflate the body with no size cap, and it would not be the body checked.
        return "Content-Encoding is not accepted: send the body uncompressed"
    if len(headers.getall(HEADER_LENGTH, [])) > 1:
        return f"repeated {HEADER_LENGTH}"
    return None


class HttpGuard:
    """Runs an aiohttp server on its own thread and event loop; ``start()`` returns once it listens.

    ``admin_key`` is the operator's key for the admin APIs; a request that carries it goes upstream with
    ``upstream_admin_key`` (what Triton was started with) instead. Any other value of the header is dropped."""

    def __init__(
        self,
        upstream: str,
        host: str,
        port: int,
        limits: GuardLimits,
        down_models: Callable[[], dict[str, str]],
        internal_models: Callable[[], set[str]],
        admin_key: str | None = None,
        upstream_admin_key: str | None = None,
        model_facts: Callable[[], dict[str, ModelFacts]] = dict,
    ):
        limits.validate()
        self.upstream, self.host, self.port, self.limits = upstream.rstrip("/"), host, port, limits
        self.down_models, self.internal_models, self.model_facts = down_models, internal_models, model_facts
        self.admin_key, self.upstream_admin_key = admin_key, upstream_admin_key
        self.requests = RequestRing()
        self.draining = False
        self._body_bytes_in_flight = 0
        self._pending_checks = 0
        self._checks: CheckPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self, timeout_s: float = 60.0) -> HttpGuard:
        self._checks = CheckPool(self.limits.check_workers, self.limits.check_memory_bytes)
        self._checks.warm_up()
        self._thread = threading.Thread(target=self._run, name="http-guard", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise RuntimeError("HTTP guard did not start")
        if self._failure is not None:
            raise RuntimeError(f"HTTP guard failed to start: {self._failure}") from self._failure
        return self

    def drain(self, timeout_s: float) -> int:
        """Refuse new requests (503, readiness false) and wait up to ``timeout_s`` for those in flight to end;
        returns how many were still running."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        while self.requests.in_flight() and time.monotonic() < deadline:
            time.sleep(0.1)
        return len(self.requests.in_flight())

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._thread = None
        if self._checks is not None:
            self._checks.shutdown()
            self._checks = None

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
        # auto_decompress=False: aiohttp would inflate a compressed body while parsing it and answer a broken one
        # with its own plain-text 400 before ``_handle`` runs; the guard refuses every Content-Encoding itself (JSON).
        runner = web.AppRunner(app, access_log=None, handle_signals=False, auto_decompress=False)
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
        if self.draining:
            return _error(503, "the server is shutting down", {"Connection": "close"})
        token = self.requests.begin(RequestRecord(time.time(), request.method, request.path_qs,
                                                  request.content_length or 0, request.remote or "?"))
        try:
            return await self._admit(request)
        finally:
            self.requests.end(token)

    async def _admit(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        match = _MODEL_PATH.match(path)
        model, action = (match["name"], match["action"]) if match else (None, None)

        down = self.down_models()
        if path == "/v2/health/ready" and down:
            return _error(400, "not ready: " + "; ".join(f"{m}: {why}" for m, why in sorted(down.items())))
        if action == "ready" and model in down:
            return _error(400, f"model {model} is not ready: {down[model]}")
        if request.method not in _METHODS:
            return _error(405, f"method {request.method} is not supported; use GET or POST",
                          {"Allow": ", ".join(_METHODS)})
        if action in _INFER_ACTIONS and model in self.internal_models():
            return _error(403, f"model {model} is internal; send requests to the public models that feed it")
        facts = self.model_facts().get(model) if action in _INFER_ACTIONS else None
        if action == "infer" and facts is not None and facts.decoupled:
            return _error(400, f"model {model} is decoupled (it streams): use generate_stream, or a gRPC stream")
        why = _framing_refusal(request)
        if why is not None:
            return _error(400, why)
        kind = INFER if action == "infer" else GENERATE if action in _INFER_ACTIONS else OTHER
        header_length = request.headers.get(HEADER_LENGTH)
        if header_length is not None and kind != INFER:
            return _error(400, f"{HEADER_LENGTH} belongs to infer requests only")
        if header_length is not None and not _DIGITS.match(header_length):
            return _error(400, f"{HEADER_LENGTH} must be a decimal integer")
        if not request.can_read_body:
            if header_length is not None:
                return _error(400, f"{HEADER_LENGTH} without a body")
            if action in _INFER_ACTIONS:
                return _error(400, "empty body: send a JSON object")
            return await self._forward(request, b"", None)

        declared = request.content_length if request.content_length is not None else self.limits.max_body_bytes
        if declared > self.limits.max_body_bytes:
            return _error(413, f"request body exceeds {self.limits.max_body_bytes} bytes")
        if self._body_bytes_in_flight + declared > self.limits.max_body_bytes_in_flight:
            return _error(503, "too many large request bodies in flight; retry later", {"Retry-After": "1"})
        self._body_bytes_in_flight += declared
        try:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return _error(413, f"request body exceeds {self.limits.max_body_bytes} bytes")
            json_length = int(header_length) if header_length is not None else None
            if json_length is not None and json_length > len(body):
                return _error(400, f"{HEADER_LENGTH} ({json_length}) exceeds the body ({len(body)} bytes)")
            why = await self._check(body, BodyCheck(kind, json_length, self.limits.max_json_depth,
                                                    self.limits.max_json_string_bytes,
                                                    self.limits.max_json_object_keys,
                                                    facts.inputs if kind == GENERATE and facts else None))
            if why is not None:
                return _error(*why) if isinstance(why, tuple) else _error(400, why)
            return await self._forward(request, body, json_length, client_body=action in _INFER_ACTIONS)
        finally:
            self._body_bytes_in_flight -= declared

    async def _check(self, body: bytes, check: BodyCheck) -> str | tuple[int, str] | None:
        if not body:
            return None if check.kind == OTHER and check.json_length is None else "empty body"
        if len(body) <= self.limits.inline_check_bytes:
            return refusal(body, check)
        if self._pending_checks >= self.limits.max_pending_checks:
            return 503, "too many large bodies waiting to be checked; retry later"
        self._pending_checks += 1
        try:
            return await asyncio.wrap_future(self._checks.submit(body, check))
        except Exception as exc:  # noqa: BLE001 - a worker that died (OOM) refuses its body, the guard lives on
            return 503, f"the body check failed ({type(exc).__name__}); retry later"
        finally:
            self._pending_checks -= 1

    def _upstream_headers(self, request: web.Request, json_length: int | None) -> dict[str, str]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS | _REWRITTEN}
        if json_length is not None:
            headers[HEADER_LENGTH] = str(json_length)
        offered = request.headers.get(ADMIN_HEADER)
        if (offered is not None and self.admin_key and self.upstream_admin_key
                and hmac.compare_digest(offered.encode(), self.admin_key.encode())):
            headers[ADMIN_HEADER] = self.upstream_admin_key
        return headers

    async def _forward(self, request: web.Request, body: bytes, json_length: int | None,
                       client_body: bool = False) -> web.StreamResponse:
        url = self.upstream + request.path_qs
        response_started = False
        try:
            # Only the client's own Accept-Encoding goes upstream: aiohttp would add gzip, and a client that never
            # asked for it (perf_analyzer's libcurl) cannot read the compressed body passed through.
            async with self._session.request(request.method, url, headers=self._upstream_headers(request, json_length),
                                             data=body or None, skip_auto_headers=("Accept-Encoding",)) as upstream:
                if client_body and upstream.status == 500:
                    # Errors come whole, before any streamed response (a 500 is never SSE).
                    raw = await upstream.content.read(_MAX_ERROR_BYTES)
                    message = _parse_error(raw)
                    if message is not None:
                        return _error(400, f"the request could not be parsed: {message}")
                    return web.Response(status=500, body=raw, content_type="application/json")
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for key, value in upstream.headers.items():
                    if key.lower() not in _HOP_HEADERS:
                        response.headers[key] = value
                if upstream.content_length is not None:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                response_started = True
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (OSError, ClientError, asyncio.TimeoutError) as exc:
            # Triton gone mid-request (a crash, a restart): the client retries; the launcher logs the request.
            if response_started:
                raise  # headers already sent: the connection is cut, the only honest signal left
            return _error(503, f"inference server unavailable: {type(exc).__name__}")



def _parse_error(raw: bytes) -> str | None:
    """The message of an upstream 500 when it is Triton's parse error for the client's body, else None (a real
    internal error, such as our models' "internal error: ..." or a dead stub: passed through as it is)."""
    try:
        message = json.loads(raw).get("error", "")
    except (ValueError, AttributeError):
        return None
    if not isinstance(message, str) or message.startswith("internal error:") or not _PARSE_ERRORS.search(message):
        return None
    return message
