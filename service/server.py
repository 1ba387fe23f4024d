"""Run the real service (uvicorn, real sockets) inside the current process.

For tests, notebooks and benchmarks that need a live server on 127.0.0.1
without a separate process::

    with BackgroundServer(Settings(models_dir=Path("runs/release"))) as server:
        httpx.get(server.url + "/health/ready")

The listening socket is bound before the thread starts (port 0 picks a free
port), so there is no window in which another process can take the port.
"""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Callable, Optional

import uvicorn

from audio_dcls.checkpoint import Release, load_release

from .app import create_app
from .settings import Settings


class _Server(uvicorn.Server):
    """uvicorn's server, telling a thread when it listens."""

    def __init__(self, config: uvicorn.Config):
        super().__init__(config)
        self.started_event = threading.Event()

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.started_event.set()


class BackgroundServer:
    """``settings`` and ``release_loader`` go to :func:`service.app.create_app`."""

    def __init__(
        self,
        settings: Settings,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        release_loader: Callable[..., Release] = load_release,
    ):
        self.settings = settings
        self.app = create_app(settings, release_loader=release_loader)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        config = uvicorn.Config(self.app, log_level=log_level, access_log=False, lifespan="on")
        self._server = _Server(config)
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def registry(self):
        return self.app.state.context.registry

    def _serve(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        finally:
            self._server.started_event.set()  # wake start() if serving ended before it began

    def start(self, wait_ready: bool = True, timeout: float = 300.0) -> "BackgroundServer":
        self._thread = threading.Thread(target=self._serve, name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        if not self._server.started_event.wait(timeout):
            raise TimeoutError(f"server did not start within {timeout:g} s")
        if not self._server.started:
            raise RuntimeError("the server thread ended during start-up (see the log)")
        if wait_ready:
            self.registry.wait(max(0.0, deadline - time.monotonic()))
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
