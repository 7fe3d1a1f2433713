"""API keys, per-key request rate (token bucket) and per-key concurrent streams."""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from dataclasses import dataclass

from gateway.errors import APIError

ANONYMOUS = "anonymous"


def key_id(key: str) -> str:
    """What the gateway stores and labels per key: never the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class Auth:
    def __init__(self, keys: tuple[str, ...]):
        self._keys = tuple(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: str | None) -> str:
        """The caller's key id; raises 401 when keys are configured and the header does not carry one of them."""
        if not self._keys:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
        token = token.strip()
        # Compare against every key so the time taken does not say which prefix matched.
        matched = [k for k in self._keys if hmac.compare_digest(k.encode(), token.encode())]
        if not matched:
            raise APIError(401, "invalid API key", code="invalid_api_key")
        return key_id(token)


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
