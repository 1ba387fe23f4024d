"""The FastAPI application: its parts, the guards in front of the routes, and start-up.

``create_app(settings)`` builds one self-contained app (its own model
registry, workers and Prometheus registry), so tests and benchmarks can run
several in one process. Start-up (the lifespan) only *starts* loading the
models in a thread: ``/health/live`` answers at once, ``/health/ready`` and
every model route answer 503 until all release folders are loaded and warmed
up.

Work per request, and where it runs:

* API key: service.auth, before anything else; body size: the route's own
  limit (service.limits), before the body is read;
* decoding and resampling: a worker thread (at most ``decode_threads`` at once);
* front end + model: the model's batching thread (service.batching);
* the event loop only parses, awaits and formats; answers from 1 KiB on are
  gzipped for clients that accept it (Starlette's GZipMiddleware).

On SIGTERM the app drains (service.drain): readiness and new uploads answer
503 while the requests in flight finish, then the process exits 0.

The routes live in service.routes; /docs (Swagger UI) and /redoc are served
from the assets packaged with ``fastapi-offline`` (no CDN; service.docs), and
they and /openapi.json need no API key: the document is no secret, and every
route it lists still needs the key.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Optional

import anyio
from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.middleware.gzip import GZipMiddleware

from audio_dcls.checkpoint import Release, load_release

from .auth import APIKeyMiddleware
from .dependencies import ServiceContext
from .docs import DOCS_ASSETS_URL, DOCS_PAGES, DocsContentSecurityPolicy
from .drain import Drain, DrainMiddleware
from .errors import install_error_handlers
from .incoming import IncomingRequests
from .limits import BodyLimitMiddleware, body_limits
from .metrics import MetricsMiddleware, ServiceMetrics
from .registry import ModelRegistry
from .routes import build_routers
from .settings import Settings
from .tagging import UploadTagger

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Responses from this size on are gzipped for clients that accept it (a tagging result with every score and
# window is tens of KiB of JSON and shrinks about 3x; a health probe is not worth the CPU). Level 6: zlib's
# default, nearly level 9's size at a fraction of its time.
GZIP_MIN_BYTES = 1024
GZIP_LEVEL = 6
DESCRIPTION = (
    "AudioSet audio tagging with DCLS models: upload a clip, get its sound-event tags.\n\n"
    'Every error is JSON `{"error": {"code": ..., "message": ...}}`. '
)


def create_app(settings: Optional[Settings] = None, *, release_loader: Callable[..., Release] = load_release) -> FastAPI:
    """The service for ``settings`` (default: from the environment).

    ``release_loader(folder, device=...)`` reads each release folder (default
    :func:`audio_dcls.checkpoint.load_release`).
    """
    settings = settings or Settings.from_env()
    metrics = ServiceMetrics()
    incoming = IncomingRequests()
    drain = Drain(settings.drain_seconds, metrics)
    registry = ModelRegistry(settings, metrics, incoming=incoming, release_loader=release_loader)
    tagger = UploadTagger(settings, metrics, drain)
    context = ServiceContext(settings=settings, metrics=metrics, registry=registry, tagger=tagger, incoming=incoming, drain=drain)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        registry.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(registry.close)

    auth = (
        "This instance runs with `API_KEY` set: every route but `/health/*` needs `Authorization: Bearer <key>` (the Authorize button)."
        if settings.api_key is not None
        else "This instance runs without `API_KEY`: no route needs a key."
    )
    app = FastAPIOffline(
        title="audio_dcls tagging service",
        description=DESCRIPTION + auth,
        version="0.1.0",
        lifespan=lifespan,
        static_url=DOCS_ASSETS_URL,
        swagger_ui_parameters={"persistAuthorization": True, "tryItOutEnabled": True},
        openapi_tags=[
            {"name": "tagging", "description": "upload audio, get tags"},
            {"name": "embeddings", "description": "upload audio, get the model's embedding of it"},
            {"name": "models", "description": "the models served and their labels"},
            {"name": "health", "description": "probes and metrics"},
        ],
    )
    app.state.context = context
    limits = body_limits(settings)
    install_error_handlers(app)
    routers = build_routers(limits)
    for router in routers:
        app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    app.add_middleware(DocsContentSecurityPolicy)
    app.add_middleware(BodyLimitMiddleware, limits=limits)
    if settings.api_key is not None:  # outside the body limits: an unauthenticated request learns nothing of them
        app.add_middleware(
            APIKeyMiddleware,
            api_key=settings.api_key,
            public_paths={"/", "/favicon.ico", app.openapi_url, app.swagger_ui_oauth2_redirect_url, *DOCS_PAGES},
            public_prefixes=("/health/", "/static/", DOCS_ASSETS_URL + "/"),
        )
    # Outside the key check: a client of an instance going away learns so whatever its key.
    app.add_middleware(DrainMiddleware, drain=drain, upload_paths=set(limits))
    # Counts the refusals of the drain, the key check and the body limits too, labelled by the route asked for.
    routes = [r for router in routers for r in router.routes] + list(app.router.routes)
    metrics.expect_routes(_documented_statuses(routers))
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=routes)
    # Outermost, so the metrics read the error codes of uncompressed bodies.
    app.add_middleware(GZipMiddleware, minimum_size=GZIP_MIN_BYTES, compresslevel=GZIP_LEVEL)
    return app


def _documented_statuses(routers) -> dict:
    """(route template, method) -> the statuses its OpenAPI entry documents (200 and its errors)."""
    out = {}
    for router in routers:
        for route in router.routes:
            statuses = {200} | {int(s) for s in getattr(route, "responses", {}) if str(s).isdigit()}
            for method in getattr(route, "methods", ()):
                out[(route.path, method)] = sorted(statuses)
    return out
