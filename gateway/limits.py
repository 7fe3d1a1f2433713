"""The front door: API keys (named principals), per-address failed-auth limit, Origin/Host checks and the body cap
as pure ASGI middleware, which answer before a body is read; per-principal request rate and concurrent streams.

The middleware is pure ASGI on purpose: a FastAPI dependency runs only after a pydantic body was read and parsed,
so a key checked there would let anyone make the gateway read 16 MiB and parse it.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.config import is_loopback
from gateway.errors import APIError, error_response

ANONYMOUS = "anonymous"
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
PROTECTED_PREFIX = "/v1/"  # every API route; the page, /static, /health and /metrics are public


def key_id(key: str) -> str:
    """What the gateway stores and labels for a bare key: never the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def parse_keys(entries: tuple[str, ...] | list[str]) -> dict[str, str]:
    """key → principal. ``name:key`` names the key's principal (keys of one name share voices and limits, so a key
    can be rotated); a bare key is its own principal, ``key_id(key)`` as before names existed."""
    keys: dict[str, str] = {}
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        name, sep, key = entry.partition(":")
        if sep and _NAME.fullmatch(name) and key.strip():
            key, principal = key.strip(), "user:" + name
        else:
            key, principal = entry, key_id(entry)
        if keys.get(key, principal) != principal:
            raise ValueError("one API key is given for two different names")
        keys[key] = principal
    return keys


class Auth:
    def __init__(self, keys: tuple[str, ...] | list[str]):
        self._keys = parse_keys(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: str | None) -> str:
        """The caller's stable principal; raises 401 when keys are configured and the header carries none of them."""
        if not self._keys:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
        token = token.strip().encode()
        # Compare against every key so the time taken does not say which prefix matched.
        matched = [principal for key, principal in self._keys.items() if hmac.compare_digest(key.encode(), token)]
        if not matched:
            raise APIError(401, "invalid API key", code="invalid_api_key")
        return matched[0]


class AuthFailures:
    """Failed key checks per client address (a token bucket of ``per_minute``): past it, the address gets 429
    without its key being looked at. Bounded: the least recently failing addresses are forgotten first."""

    def __init__(self, per_minute: int, max_addresses: int = 10_000, clock=time.monotonic):
        self.capacity, self.refill_per_s = float(per_minute), per_minute / 60.0
        self.max_addresses = max_addresses
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def _bucket(self, address: str, now: float) -> _Bucket | None:
        bucket = self._buckets.get(address)
        if bucket is not None:
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.refill_per_s)
            bucket.updated = now
        return bucket

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try a key again, None while it may."""
        with self._lock:
            bucket = self._bucket(address, self._clock())
            if bucket is None or bucket.tokens >= 1.0:
                return None
            return max(1, math.ceil((1.0 - bucket.tokens) / self.refill_per_s))

    def record(self, address: str) -> None:
        with self._lock:
            now = self._clock()
            bucket = self._bucket(address, now)
            if bucket is None:
                bucket = self._buckets[address] = _Bucket(self.capacity, now)
                while len(self._buckets) > self.max_addresses:
                    self._buckets.popitem(last=False)
            self._buckets.move_to_end(address)
            bucket.tokens = max(0.0, bucket.tokens - 1.0)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class Lease:
    """One concurrency slot; ``release`` is idempotent (streams release when they end, errors before that)."""

    def __init__(self, limiter: Limiter, key: str):
        self._limiter, self._key, self._held = limiter, key, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limiter._release(self._key)


class Limiter:
    def __init__(self, rate_per_minute: int, max_concurrent: int, clock=time.monotonic):
        self.capacity, self.refill_per_s = float(rate_per_minute), rate_per_minute / 60.0
        self.max_concurrent = max_concurrent
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._active: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> Lease:
        """Take one request from the key's rate and one concurrency slot, or raise 429 with Retry-After."""
        with self._lock:
            now = self._clock()
            bucket = self._buckets.setdefault(key, _Bucket(self.capacity, now))
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.refill_per_s)
            bucket.updated = now
            if bucket.tokens < 1.0:
                wait = math.ceil((1.0 - bucket.tokens) / self.refill_per_s)
                raise APIError(429, f"rate limit reached: {int(self.capacity)} requests per minute per key; retry in {wait} s",
                               code="rate_limit_exceeded", headers={"Retry-After": str(wait)})
            if self._active.get(key, 0) >= self.max_concurrent:
                raise APIError(429, f"too many requests at once: at most {self.max_concurrent} per key; retry when one ends",
                               code="concurrency_limit_exceeded", headers={"Retry-After": "1"})
            bucket.tokens -= 1.0
            self._active[key] = self._active.get(key, 0) + 1
        return Lease(self, key)

    def _release(self, key: str) -> None:
        with self._lock:
            self._active[key] -= 1
            if not self._active[key]:
                del self._active[key]


# ---- ASGI middleware: each answers before the application reads a byte of the body ---------------------------------
WEBSOCKET_DENIAL = "websocket.http.response"  # the ASGI extension that lets a socket be refused with an HTTP answer


async def refuse(scope, receive, send, error: APIError) -> None:
    """``error`` as an HTTP response in OpenAI's shape, a WebSocket handshake's too: with the server's denial
    response extension (uvicorn's three socket implementations have it) the client reads the status and the JSON;
    without it the only answer left is a close before accept, which the client sees as a bare HTTP 403."""
    response = error_response(error.status_code, error.message, error.code, error.param, error.headers)
    if scope["type"] == "websocket" and WEBSOCKET_DENIAL not in (scope.get("extensions") or {}):
        code = 1013 if error.status_code == 429 else 1008
        return await send({"type": "websocket.close", "code": code, "reason": error.message[:120]})
    await response(scope, receive, send)  # Starlette's Response sends websocket.http.response.* for a socket


def _header_values(scope, name: bytes) -> list[bytes]:
    return [value for key, value in scope["headers"] if key == name]


class BodyLimit:
    """Refuses a body over ``limit`` bytes by its Content-Length, or while it arrives (chunked)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    def _error(self) -> APIError:
        return APIError(413, f"request body is larger than {self.limit} bytes", code="request_too_large")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        lengths = _header_values(scope, b"content-length")
        if any(v.isdigit() and int(v) > self.limit for v in lengths):
            return await refuse(scope, receive, send, self._error())
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise self._error()
            return message

        await self.app(scope, limited, send)


class AuthGate:
    """Checks the key of every API request (``/v1/...``, the realtime socket included) from its headers alone and
    puts the principal in ``scope["state"]["principal"]``; an address with too many failures gets 429.
    ``websocket_principal(scope, receive, send, auth)`` reads a socket's key (browsers send it as a subprotocol)."""

    def __init__(self, app, auth: Auth, failures: AuthFailures, websocket_principal=None):
        self.app, self.auth, self.failures = app, auth, failures
        self.websocket_principal = websocket_principal

    def _principal(self, scope, receive, send) -> str:
        if scope["type"] == "websocket" and self.websocket_principal is not None:
            return self.websocket_principal(scope, receive, send, self.auth)
        values = _header_values(scope, b"authorization")
        if len(values) > 1:
            raise APIError(401, "send one Authorization header", code="invalid_api_key")
        return self.auth.check(values[0].decode("latin-1") if values else None)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or not self.auth.enabled \
                or not scope["path"].startswith(PROTECTED_PREFIX):
            return await self.app(scope, receive, send)
        address = (scope.get("client") or ("unknown",))[0]
        wait = self.failures.retry_after(address)
        if wait is not None:
            return await refuse(scope, receive, send, APIError(
                429, f"too many failed API key checks from this address; retry in {wait} s",
                code="auth_rate_limit_exceeded", headers={"Retry-After": str(wait)}))
        try:
            principal = self._principal(scope, receive, send)
        except APIError as exc:
            self.failures.record(address)
            return await refuse(scope, receive, send, exc)
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def loopback_host_header(host: str) -> bool:
    """Whether a Host header (``name[:port]``, ``[v6][:port]``) names this machine by a loopback name or address."""
    try:
        name = urlsplit("//" + host).hostname
        urlsplit("//" + host).port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return False
    return name is not None and is_loopback(name)


class OriginGate:
    """Against DNS rebinding and cross-site requests. Without keys (loopback only): the Host header must be a
    loopback name or address, and a request carrying an ``Origin`` must come from the gateway's own origin or the
    allow-list. With keys the Origin check guards the WebSocket (a browser sends it, and its key, from any page)."""

    def __init__(self, app, allowed_origins: tuple[str, ...], loopback_only: bool):
        self.app, self.loopback_only = app, loopback_only
        self.allowed = frozenset(o.rstrip("/").lower() for o in allowed_origins)

    def _origin_ok(self, origin: str, host: str) -> bool:
        origin = origin.rstrip("/").lower()
        return origin in self.allowed or origin in (f"http://{host.lower()}", f"https://{host.lower()}")

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        hosts, origins = _header_values(scope, b"host"), _header_values(scope, b"origin")
        if len(hosts) > 1 or len(origins) > 1:
            return await refuse(scope, receive, send, APIError(400, "send one Host and at most one Origin header",
                                                                code="ambiguous_headers"))
        host = hosts[0].decode("latin-1") if hosts else ""
        if self.loopback_only and not loopback_host_header(host):
            return await refuse(scope, receive, send, APIError(
                403, "this gateway runs without API keys and answers only requests addressed to a loopback name "
                     "(Host: localhost or 127.0.0.1)", code="forbidden_host"))
        checked = self.loopback_only or scope["type"] == "websocket"
        if checked and origins and not self._origin_ok(origins[0].decode("latin-1"), host):
            return await refuse(scope, receive, send, APIError(
                403, "requests from this Origin are not allowed (see --allowed-origin)", code="forbidden_origin"))
        await self.app(scope, receive, send)
