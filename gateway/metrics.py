"""Prometheus metrics and the ASGI middleware that records every request, refusals included.

Label values never come from a client as they are: a method outside HTTP's usual ones counts as ``other`` and a
path that is no route as ``unmatched``, so made-up methods and paths cannot add series.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD, UNMATCHED_PATH = "other", "unmatched"


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()  # per app: several gateways may live in one process (tests)
        self.requests = Counter("gateway_requests", "HTTP requests by route and status", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("gateway_request_seconds", "Request time until the last byte left", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.first_audio = Histogram("gateway_first_audio_seconds", "Request start until the first audio bytes left",
                                     ["route"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("gateway_in_flight", "Requests being served", ["route"], registry=self.registry)
        self.triton_cancelled = Counter("gateway_triton_streams_cancelled", "Triton streams cancelled early (client gone)",
                                        ["model"], registry=self.registry)


class MetricsMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware): streamed responses and disconnect detection stay untouched."""

    def __init__(self, app, metrics: Metrics, paths: set[str]):
        self.app, self.metrics, self.paths = app, metrics, paths  # the app's route paths (templates included)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500}

        async def record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        # The route is known only after routing (and not at all for a request refused at the door): until then the
        # raw path stands for itself when it is a route's path.
        path_label = scope["path"] if scope["path"] in self.paths else UNMATCHED_PATH
        method = scope["method"] if scope["method"] in METHODS else OTHER_METHOD
        self.metrics.in_flight.labels(path_label).inc()
        try:
            await self.app(scope, receive, record)
        finally:
            self.metrics.in_flight.labels(path_label).dec()
            route = getattr(scope.get("route"), "path", None) or path_label
            self.metrics.requests.labels(route, method, str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
