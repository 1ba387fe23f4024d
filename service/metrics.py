"""Prometheus metrics of one app, on a registry of its own (two apps in one process never mix).

Requests are labelled by route *template* (``/v1/models/{name}``), never by
the raw path, so an attacker probing random URLs cannot grow the label set;
paths that match no route count as ``unmatched``.
"""
from __future__ import annotations

import time
from typing import Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

# Latency buckets from 5 ms (health probes) to 2 min (a 10-minute file on a busy CPU).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "audio_dcls_http_requests_total", "HTTP requests answered, by route template, method and status", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "audio_dcls_http_request_duration_seconds",
            "Time from request start to the end of the response, by route template, method and status",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("audio_dcls_queue_depth", "Requests queued or in progress per model", ["model"], registry=r)
        self.batch_size = Histogram("audio_dcls_batch_size", "Windows per forward pass, per model", ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("audio_dcls_batch_duration_seconds", "Time of one forward pass (front end + model), per model", ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.decode_errors = Counter(
            "audio_dcls_decode_errors_total", "Uploads refused while decoding, by reason", ["reason"], registry=r
        )
        self.rejected = Counter("audio_dcls_queue_rejections_total", "Requests refused with 503 because a model queue was full", ["model"], registry=r)
        self.audio_seconds = Counter("audio_dcls_audio_seconds_total", "Seconds of audio tagged, per model", ["model"], registry=r)
        self.ready = Gauge("audio_dcls_ready", "1 once every model is loaded and warmed up", registry=r)
        self.models_loaded = Gauge("audio_dcls_models_loaded", "Models serving requests", registry=r)
        for reason in ("unsupported", "undecodable", "too_long", "too_large"):
            self.decode_errors.labels(reason)  # export zeros so rate() works from the first scrape

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def watch_worker(self, model: str, worker) -> None:
        self.queue_depth.labels(model).set_function(worker.depth)

    def batch_observer(self, model: str):
        size, seconds = self.batch_size.labels(model), self.batch_seconds.labels(model)

        def observe(windows: int, elapsed: float) -> None:
            size.observe(windows)
            seconds.observe(elapsed)

        return observe


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP response and times it to its last byte.

    ``routes`` are the app's routes, to label the requests refused before routing (401, 413) by the
    template they asked for.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, routes: Sequence[BaseRoute] = ()):
        self.app = app
        self.metrics = metrics
        self.routes = tuple(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            labels = (self._route_template(scope), scope.get("method", "GET"), str(status["code"]))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - start)

    def _route_template(self, scope: Scope) -> str:
        route = scope.get("route")  # set by the router once it has matched
        if route is not None and getattr(route, "path", None):
            return route.path
        for r in self.routes:
            match, _ = r.matches(scope)
            if match == Match.FULL and getattr(r, "path", None):
                return r.path
        return "unmatched"
