"""The FastAPI application: routes, start-up, and the guards in front of them.

``create_app(settings)`` builds one self-contained app (its own model
registry, workers and Prometheus registry), so tests and benchmarks can run
several in one process. Start-up (the lifespan) only *starts* loading the
models in a thread: ``/health/live`` answers at once, ``/health/ready`` and
every model route answer 503 until all release folders are loaded and warmed
up.

Work per request, and where it runs:

* body size and API key: checked in an ASGI guard before the body is read;
* decoding and resampling: a worker thread (at most ``decode_threads`` at once);
* front end + model: the model's batching thread (service.batching);
* the event loop only parses, awaits and formats.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from pathlib import Path
from typing import List, Optional

import anyio
from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from audio_dcls.checkpoint import RELEASE_NAME

from .batching import QueueFull, TagJob, WorkerStopped
from .errors import ServiceError, error_response, install_error_handlers
from .metrics import MetricsMiddleware, ServiceMetrics
from .registry import MAX_WINDOW_S, MIN_WINDOW_S, LoadedModel, ModelRegistry, labels_payload
from .settings import Settings
from .tagging import TagParams, build_result, decode_upload, ms, padded_waveform, plan_windows

log = logging.getLogger("service")

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Room for multipart boundaries and the small form fields next to the file(s).
MULTIPART_OVERHEAD = 256 * 1024
PUBLIC_PREFIXES = ("/health/",)
PUBLIC_PATHS = {"/", "/favicon.ico"}


class IncomingRequests:
    """Tagging requests received but not yet handed to a worker (uploading, parsing, decoding).

    Workers read the count to decide whether waiting for a fuller batch can pay off.
    Changed only on the event loop; the workers only read an int.
    """

    def __init__(self):
        self.count = 0

    def __call__(self) -> int:
        return self.count

    def enter(self) -> "IncomingTicket":
        self.count += 1
        return IncomingTicket(self)


class IncomingTicket:
    def __init__(self, owner: IncomingRequests):
        self.owner = owner
        self.open = True

    def release(self) -> None:
        if self.open:
            self.open = False
            self.owner.count -= 1


class GuardMiddleware:
    """Checks the API key and the body size before any of the body is read.

    Both refusals are plain JSON responses sent from here, so an unauthenticated
    or oversized upload never reaches the multipart parser. Bodies without a
    Content-Length (chunked) are counted as they stream and cut off at the limit.
    """

    def __init__(self, app: ASGIApp, settings: Settings, incoming: IncomingRequests):
        self.app = app
        self.settings = settings
        self.incoming = incoming
        self.single_limit = settings.max_upload_bytes + MULTIPART_OVERHEAD
        self.batch_limit = settings.max_upload_bytes * settings.max_batch_files + MULTIPART_OVERHEAD

    def _body_limit(self, path: str) -> int:
        if path.rstrip("/") == "/v1/tag/batch":
            return self.batch_limit
        if path.startswith("/v1/tag"):
            return self.single_limit
        return MULTIPART_OVERHEAD  # no other route takes a body worth the name

    def _authorised(self, scope: Scope) -> bool:
        key = self.settings.api_key
        if key is None:
            return True
        path = scope.get("path", "")
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES) or path.startswith("/static/"):
            return True
        header = ""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._authorised(scope):
            response = error_response(
                401, "unauthorized", "this route needs an API key: send 'Authorization: Bearer <key>'", {"WWW-Authenticate": 'Bearer realm="audio_dcls"'}
            )
            await response(scope, receive, send)
            return
        limit = self._body_limit(scope.get("path", ""))
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
                break
        if declared is not None and declared > limit:
            response = error_response(413, "payload_too_large", _too_large_message(self.settings, scope.get("path", ""), declared))
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside body parsing; FastAPI passes HTTPExceptions through.
                    raise StarletteHTTPException(413, _too_large_message(self.settings, scope.get("path", ""), received))
            return message

        if scope.get("method") != "POST" or not scope.get("path", "").startswith("/v1/tag"):
            await self.app(scope, counting_receive, send)
            return
        ticket = self.incoming.enter()
        scope.setdefault("state", {})["incoming_ticket"] = ticket
        try:
            await self.app(scope, counting_receive, send)
        finally:
            ticket.release()


def _too_large_message(settings: Settings, path: str, size: int) -> str:
    if path.rstrip("/") == "/v1/tag/batch":
        return f"the request body ({size} bytes so far) exceeds the limit of {settings.max_batch_files} files of {settings.max_upload_bytes} bytes"
    return f"the upload ({size} bytes) exceeds the limit of {settings.max_upload_bytes} bytes (MAX_UPLOAD_BYTES)"


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    settings = settings or Settings.from_env()
    metrics = ServiceMetrics()
    registry = ModelRegistry(settings, metrics)
    decode_limiter = anyio.CapacityLimiter(settings.decode_threads)
    incoming = IncomingRequests()
    registry.incoming = incoming

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        registry.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(registry.close)

    app = FastAPI(
        title="audio_dcls tagging service",
        description="AudioSet audio tagging with DCLS models: upload a clip, get its sound-event tags.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(GuardMiddleware, settings=settings, incoming=incoming)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: sees guard refusals too

    # --- dependencies ------------------------------------------------------------------
    def not_ready_error() -> ServiceError:
        # "no_models" once loading has finished with nothing to serve (retrying will not help until
        # MODELS_DIR is fixed and the service restarted); "not_ready" while it is still loading.
        code = "no_models" if registry.state == "failed" else "not_ready"
        return ServiceError(503, code, f"the service is not ready: {registry.not_ready_reason()}", {"Retry-After": "5"})

    def ready_registry() -> ModelRegistry:
        if not registry.ready:
            raise not_ready_error()
        return registry

    def resolve_model(reg: ModelRegistry, name: Optional[str]) -> LoadedModel:
        if name is not None and not RELEASE_NAME.match(name):
            raise ServiceError(422, "invalid_parameter", f"model: {name!r} is not a valid model name (letters, digits, '.', '_', '-')")
        loaded = reg.get(name)
        if loaded is None:
            available = ", ".join(sorted(reg.models)) or "none"
            raise ServiceError(404, "model_not_found", f"no model named {name!r} (available: {available})")
        return loaded

    def tag_params(top_k: int, threshold: Optional[float], window_s: float, hop_s: Optional[float]) -> TagParams:
        hop = hop_s if hop_s is not None else window_s / 2.0
        if hop > window_s:
            raise ServiceError(422, "invalid_parameter", f"hop_s ({hop:g}) must not exceed window_s ({window_s:g}): audio between windows would go untagged")
        return TagParams(top_k=top_k, threshold=threshold, window_s=window_s, hop_s=hop)

    # --- the work for one file ------------------------------------------------------------
    async def tag_bytes(loaded: LoadedModel, data: bytes, params: TagParams, ticket: Optional[IncomingTicket] = None) -> dict:
        t_start = time.perf_counter()
        if len(data) > settings.max_upload_bytes:
            metrics.decode_errors.labels("too_large").inc()
            raise ServiceError(413, "payload_too_large", f"the file ({len(data)} bytes) exceeds the limit of {settings.max_upload_bytes} bytes (MAX_UPLOAD_BYTES)")
        sr = loaded.sample_rate

        def prepare():  # decoding, resampling and padding are CPU work: a thread, not the event loop
            audio = decode_upload(data, sr, settings.max_audio_seconds, metrics)
            if audio.shape[0] / sr > settings.max_audio_seconds:  # formats without a length in their header
                metrics.decode_errors.labels("too_long").inc()
                raise ServiceError(413, "audio_too_long", f"the audio lasts {audio.shape[0] / sr:.1f} s, longer than the {settings.max_audio_seconds:g} s limit")
            plan = plan_windows(audio.shape[0], sr, params.window_s, params.hop_s, settings.max_windows)
            return audio.shape[0], plan, padded_waveform(audio, plan)

        num_samples, plan, waveform = await anyio.to_thread.run_sync(prepare, limiter=decode_limiter)
        t_decoded = time.perf_counter()
        job = TagJob(waveform=waveform, starts=plan.starts, window=plan.window)
        if ticket is not None:
            ticket.release()  # no longer "on its way": it is in the queue now
        try:
            future = loaded.worker.submit(job)
        except QueueFull as e:
            metrics.rejected.labels(loaded.name).inc()
            raise ServiceError(503, "queue_full", f"model {loaded.name} has {settings.queue_size} requests waiting; retry after {e.retry_after_s} s", {"Retry-After": str(e.retry_after_s)}) from None
        except WorkerStopped as e:
            raise ServiceError(503, "not_ready", str(e), {"Retry-After": "5"}) from None
        try:
            await asyncio.wrap_future(future)
        except WorkerStopped as e:
            raise ServiceError(503, "not_ready", str(e), {"Retry-After": "5"}) from None
        except asyncio.CancelledError:
            future.cancel()  # the client went away: drop the windows not yet run
            raise
        t_done = time.perf_counter()
        metrics.audio_seconds.labels(loaded.name).inc(num_samples / sr)
        timing = {
            "decode_ms": ms(t_decoded - t_start),
            "queue_ms": ms((job.first_batch_at or t_done) - job.submitted_at),
            "inference_ms": ms(job.compute_s),
            "total_ms": ms(t_done - t_start),
        }
        return build_result(loaded.name, loaded.release.labels, job.scores, plan, num_samples, sr, params, timing)

    # --- routes --------------------------------------------------------------------------
    @app.get("/health/live", tags=["health"])
    async def live():
        return {"status": "alive"}

    @app.get("/health/ready", tags=["health"])
    async def ready():
        if not registry.ready:
            raise not_ready_error()
        return {"status": "ready", "models": sorted(registry.models), "default_model": registry.default_name, "failed": registry.failed}

    @app.get("/metrics", tags=["health"])
    async def prometheus_metrics():
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models", tags=["models"])
    async def list_models(reg: ModelRegistry = Depends(ready_registry)):
        return {"default": reg.default_name, "models": [reg.models[n].summary() for n in sorted(reg.models)], "failed": reg.failed}

    @app.get("/v1/models/{name}", tags=["models"])
    async def model_details(name: str, reg: ModelRegistry = Depends(ready_registry)):
        loaded = reg.models.get(name)
        if loaded is None:
            available = ", ".join(sorted(reg.models))
            raise ServiceError(404, "model_not_found", f"no model named {name!r} (available: {available})")
        d = loaded.details()
        d["default"] = name == reg.default_name
        return d

    @app.get("/v1/labels", tags=["models"])
    async def labels(model: Optional[str] = None, reg: ModelRegistry = Depends(ready_registry)):
        loaded = resolve_model(reg, model)
        r = loaded.release
        return {"model": loaded.name, "label_source": r.label_source, "num_classes": len(r.labels), "labels": labels_payload(r.labels)}

    def _ticket(request: Request) -> Optional[IncomingTicket]:
        return getattr(request.state, "incoming_ticket", None)

    @app.post("/v1/tag", tags=["tagging"])
    async def tag(
        request: Request,
        file: UploadFile = File(..., description="the audio file (WAV, FLAC, Ogg, MP3, AIFF, M4A/AAC, WebM, ...)"),
        model: Optional[str] = Form(None, max_length=128, description="model name (GET /v1/models); default: the service's default model"),
        top_k: int = Form(10, ge=1, le=527, description="tags to return for the clip and for each window"),
        threshold: Optional[float] = Form(None, ge=0.0, le=1.0, description="only tags scoring at least this"),
        window_s: float = Form(10.0, ge=MIN_WINDOW_S, le=MAX_WINDOW_S, description="analysis window in seconds"),
        hop_s: Optional[float] = Form(None, gt=0.0, le=MAX_WINDOW_S, description="step between windows in seconds (default window_s / 2)"),
        reg: ModelRegistry = Depends(ready_registry),
    ):
        params = tag_params(top_k, threshold, window_s, hop_s)
        loaded = resolve_model(reg, model)
        data = await file.read()
        result = await tag_bytes(loaded, data, params, _ticket(request))
        result["filename"] = file.filename
        return JSONResponse(result)  # plain JSON types already: skip jsonable_encoder's walk over 527 scores

    @app.post("/v1/tag/batch", tags=["tagging"])
    async def tag_batch(
        request: Request,
        files: List[UploadFile] = File(..., description="the audio files, one form field 'files' each"),
        model: Optional[str] = Form(None, max_length=128),
        top_k: int = Form(10, ge=1, le=527),
        threshold: Optional[float] = Form(None, ge=0.0, le=1.0),
        window_s: float = Form(10.0, ge=MIN_WINDOW_S, le=MAX_WINDOW_S),
        hop_s: Optional[float] = Form(None, gt=0.0, le=MAX_WINDOW_S),
        reg: ModelRegistry = Depends(ready_registry),
    ):
        if len(files) > settings.max_batch_files:
            raise ServiceError(413, "too_many_files", f"{len(files)} files in one request; the limit is {settings.max_batch_files} (MAX_BATCH_FILES)")
        params = tag_params(top_k, threshold, window_s, hop_s)
        loaded = resolve_model(reg, model)

        ticket = _ticket(request)

        async def one(upload: UploadFile) -> dict:
            try:
                data = await upload.read()
                result = await tag_bytes(loaded, data, params, ticket)
                return {"filename": upload.filename, "status": 200, "result": result}
            except ServiceError as e:
                return {"filename": upload.filename, "status": e.status, "error": e.body()}
            except Exception:  # a server fault on one file must not lose the others' results
                log.exception("batch request: file %r failed", upload.filename)
                return {"filename": upload.filename, "status": 500, "error": {"code": "internal_error", "message": "the server failed on this file; see its log"}}

        results = await asyncio.gather(*(one(f) for f in files))
        return JSONResponse({"model": loaded.name, "results": list(results)})

    # --- the web page ----------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
