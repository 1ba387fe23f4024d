"""Prometheus metrics of one app, on a registry of its own (two apps in one process never mix).

Requests are labelled by route *template* (``/v1/models/{name}``), never by
the raw path, so an attacker probing random URLs cannot grow the label set;
paths that match no route count as ``unmatched``.

Every error answer is counted by its code word (``refusals_total{reason,
status}``) where it leaves the service: :class:`MetricsMiddleware` reads the
code from the JSON body of every response with status >= 400, so refusals
made before routing (the API key, the body limits, a drain) count like the
others; a file refused inside a batch request is counted by the batch route.

Every label set the service knows in advance (error codes, decode-warning
kinds, each model's series, each route's documented statuses) is created at 0
when the app (or the model) is set up, so a dashboard's ``rate()`` sees the
series before the first event. ``*_created`` samples are left out of the
exposition, and the process and Python collectors (memory, CPU, open files,
garbage collection) are on.
"""
from __future__ import annotations

import json
import time
from typing import Iterable, Mapping, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.metrics_core import Metric
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from audio_dcls.audio import WARNING_KINDS

from .errors import ERROR_CODES

# Latency buckets from 5 ms (health probes) to 2 min (a 10-minute file on a busy CPU).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
DECODE_ERROR_REASONS = ("unsupported", "undecodable", "too_long")
_ERROR_BODY_LIMIT = 64 * 1024  # error bodies are a sentence; a larger one is not ours and is not parsed


class _WithoutCreated:
    """The registry's metrics without their ``*_created`` samples (prometheus_client adds one per
    counter and histogram child; dashboards never use them and they double the series)."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        for metric in self.registry.collect():
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


class ServiceMetrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds, ...
        PlatformCollector(registry=r)  # python_info
        GCCollector(registry=r)  # python_gc_*
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
        self.in_flight = Gauge("audio_dcls_http_requests_in_flight", "HTTP requests received and not yet answered", registry=r)
        self.refusals = Counter(
            "audio_dcls_refusals_total",
            "Error answers by error code (reason) and status: whole requests, and single files of batch requests",
            ["reason", "status"],
            registry=r,
        )
        self.queue_depth = Gauge("audio_dcls_queue_depth", "Requests queued or in progress per model", ["model"], registry=r)
        self.batch_size = Histogram("audio_dcls_batch_size", "Windows per forward pass, per model", ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("audio_dcls_batch_duration_seconds", "Time of one forward pass (front end + model), per model", ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.decode_errors = Counter("audio_dcls_decode_errors_total", "Uploads the decoder refused, by reason", ["reason"], registry=r)
        self.decode_warnings = Counter(
            "audio_dcls_decode_warnings_total", "Uploads decoded with a warning (tagged all the same), by kind", ["kind"], registry=r
        )
        self.rejected = Counter("audio_dcls_queue_rejections_total", "Requests refused with 503 because a model queue was full", ["model"], registry=r)
        self.timeouts = Counter("audio_dcls_request_timeouts_total", "Requests answered 504 after REQUEST_TIMEOUT_S, per model", ["model"], registry=r)
        self.audio_seconds = Counter("audio_dcls_audio_seconds_total", "Seconds of audio tagged, per model", ["model"], registry=r)
        self.ready = Gauge("audio_dcls_ready", "1 once every model is loaded and warmed up", registry=r)
        self.draining = Gauge("audio_dcls_draining", "1 from SIGTERM until the process exits: in-flight requests finish, new tagging requests get 503", registry=r)
        self.models_loaded = Gauge("audio_dcls_models_loaded", "Models serving requests", registry=r)
        for reason in DECODE_ERROR_REASONS:
            self.decode_errors.labels(reason)
        for kind in WARNING_KINDS:
            self.decode_warnings.labels(kind)
        for code, status in ERROR_CODES.items():
            self.refusals.labels(code, str(status))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(_WithoutCreated(self.registry)), CONTENT_TYPE_LATEST

    def refused(self, code: str, status: int) -> None:
        self.refusals.labels(code, str(status)).inc()

    def decoded_with_warnings(self, warnings: Sequence[str]) -> None:
        for kind in {w.split(": ", 1)[0] for w in warnings}:
            self.decode_warnings.labels(kind).inc()

    def expect_routes(self, statuses: Mapping[tuple, Iterable[int]]) -> None:
        """Create the request counters of every (route template, method) at each status it documents."""
        for (route, method), codes in statuses.items():
            for status in codes:
                self.requests.labels(route, method, str(status))

    def watch_worker(self, model: str, worker) -> None:
        """A model's series: its queue depth read from the worker, its counters created at 0."""
        self.queue_depth.labels(model).set_function(worker.depth)
        for metric in (self.rejected, self.timeouts, self.audio_seconds, self.batch_size, self.batch_seconds):
            metric.labels(model)

    def batch_observer(self, model: str):
        size, seconds = self.batch_size.labels(model), self.batch_seconds.labels(model)

        def observe(windows: int, elapsed: float) -> None:
            size.observe(windows)
            seconds.observe(elapsed)

        return observe


def _error_code(body: bytes) -> str:
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return "unknown"
    return code if isinstance(code, str) and code in ERROR_CODES else "other"


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP response, times it to its last byte, keeps the
    in-flight gauge, and counts each error answer by the code in its body.

    ``routes`` are the app's routes, to label the requests refused before routing (401, 413, a
    drain's 503) by the template they asked for.
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
        error_body = bytearray()

        async def send_wrapper(message: Message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            elif message["type"] == "http.response.body" and status["code"] >= 400 and len(error_body) <= _ERROR_BODY_LIMIT:
                error_body.extend(message.get("body", b""))
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            code = status["code"]
            labels = (self._route_template(scope), scope.get("method", "GET"), str(code))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - start)
            if code >= 400:
                self.metrics.refused(_error_code(bytes(error_body)), code)

    def _route_template(self, scope: Scope) -> str:
        route = scope.get("route")  # set by the router once it has matched
        if route is not None and getattr(route, "path", None):
            return route.path
        for r in self.routes:
            match, _ = r.matches(scope)
            if match == Match.FULL and getattr(r, "path", None):
                return r.path
        return "unmatched"
