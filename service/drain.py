"""Graceful shutdown: on SIGTERM, stop taking uploads, answer what is in flight, then exit 0.

A rolling restart sends SIGTERM and, after the orchestrator's grace period,
SIGKILL. Between the two the service *drains*:

* at once, ``/health/ready`` answers 503 (``shutting_down``) so the load
  balancer stops sending traffic, and every new upload (``POST`` to a route
  with a body limit: ``/v1/tag``, ``/v1/tag/batch``, ``/v1/embed``) gets 503
  with ``Retry-After``; the socket stays open meanwhile, so nobody sees a
  refused connection (nor ``Connection: close``: closing with the upload still
  arriving would reset the connection before the client reads the 503);
* requests already in flight go on: uploads are read, decoded and tagged;
* once none is left, or ``DRAIN_SECONDS`` have passed, the process exits with
  status 0 (uvicorn closes the sockets, the workers stop). At the deadline a
  request still waiting for its windows is answered 503 (``shutting_down``)
  and its windows are dropped, so every client gets an answer.

A second SIGTERM (or Ctrl-C) skips the rest of the drain, a third exits at
once. :class:`Drain` is the state (one per app, in ``ServiceContext``),
:class:`DrainMiddleware` counts the requests and refuses new uploads,
:class:`DrainingServer` is the uvicorn server that drives it from the signals.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Collection, Optional

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_response

log = logging.getLogger("service.drain")

RETRY_AFTER_S = 5  # what a refused client is told to wait (another instance will have it by then)
EXPIRY_GRACE_S = 2.0  # after the deadline: time for the requests answered 503 to be sent before the sockets close


class Drain:
    """The shutdown state of one app. Changed on the event loop, except :meth:`begin`, which a
    signal handler calls (it only stores a time)."""

    def __init__(self, seconds: float, metrics=None):
        self.seconds = float(seconds)
        self.metrics = metrics
        self.in_flight = 0  # HTTP requests received and not yet answered
        self.started_at: Optional[float] = None  # time.monotonic() of the first SIGTERM
        self._expired: Optional[asyncio.Event] = None
        self._announced = False

    @property
    def draining(self) -> bool:
        return self.started_at is not None

    def begin(self) -> None:
        if self.started_at is None:
            self.started_at = time.monotonic()
            if self.metrics is not None:
                self.metrics.draining.set(1)

    def time_left(self) -> float:
        if self.started_at is None:
            return self.seconds
        return self.seconds - (time.monotonic() - self.started_at)

    def expired(self) -> asyncio.Event:
        """Set once DRAIN_SECONDS have passed: requests still waiting for the model give up (503)."""
        if self._expired is None:
            self._expired = asyncio.Event()
        return self._expired

    def finished(self) -> bool:
        """Called on the event loop (every 0.1 s): True once the process may exit."""
        if self.started_at is None:
            return False
        if not self._announced:
            self._announced = True
            log.info("draining: %d request(s) in flight; readiness is 503, new uploads are refused; exiting within %g s", self.in_flight, self.seconds)
        left = self.time_left()
        if self.in_flight == 0:
            log.info("drained after %.1f s; shutting down", self.seconds - left)
            return True
        if left <= 0:
            if not self.expired().is_set():
                log.warning("DRAIN_SECONDS=%g passed with %d request(s) in flight; answering them 503", self.seconds, self.in_flight)
                self.expired().set()
            if left <= -EXPIRY_GRACE_S:
                return True
        return False


class DrainMiddleware:
    """Counts the requests in flight; while draining, answers new uploads 503 before reading them."""

    def __init__(self, app: ASGIApp, drain: Drain, upload_paths: Collection[str]):
        self.app = app
        self.drain = drain
        self.upload_paths = frozenset(upload_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.draining and scope.get("method") == "POST" and scope.get("path") in self.upload_paths:
            response = error_response(
                503,
                "shutting_down",
                "this instance is shutting down and takes no new uploads; retry (another instance will answer)",
                {"Retry-After": str(RETRY_AFTER_S)},
            )
            await response(scope, receive, send)
            return
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain between the first signal and the shutdown.

    uvicorn re-raises the signal it shut down for once it is done (so the process dies *of*
    SIGTERM, status 143); this server handles the signal itself and the process exits 0.
    """

    def __init__(self, config: uvicorn.Config, drain: Drain):
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig, frame) -> None:
        if not self.drain.draining:
            self.drain.begin()
        elif not self.should_exit:
            self.should_exit = True  # a second signal: shut down now (uvicorn still waits for open requests)
        else:
            self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        return self.drain.finished()
