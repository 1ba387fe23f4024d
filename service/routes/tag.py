"""Tagging: one file, or several in one request.

Both routes take a multipart form. Their body limits come from the settings
(MAX_UPLOAD_BYTES per file, MAX_BATCH_FILES files; enforced by
service.limits before the body is read), and their descriptions quote them,
so :func:`build_router` declares the routes for each app. The results are built as plain JSON-ready
dicts and sent as they are: the response models document them without a
pydantic pass over 527 scores.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
from dataclasses import dataclass
from typing import List, Mapping, Optional

from fastapi import APIRouter, Depends, File, Form, Security, UploadFile
from fastapi.responses import JSONResponse

from audio_dcls.windowing import DEFAULT_WINDOW_S, MAX_WINDOW_S, MIN_WINDOW_S, default_hop_s

from ..dependencies import ServiceContext, api_key_scheme, get_context, ready_registry, resolve_model
from ..errors import ServiceError
from ..incoming import CountedRoute, IncomingTicket, incoming_ticket
from ..limits import BodyLimit
from ..registry import LoadedModel, ModelRegistry
from ..schemas import BatchTagResponse, TagResponse, error_responses
from ..tagging import INCLUDE_CHOICES, TagParams, parse_include

log = logging.getLogger("service")

_S413 = "the body is over the route's limit (`payload_too_large`), the audio over MAX_AUDIO_SECONDS (`audio_too_long`) or cut into more than MAX_WINDOWS windows (`too_many_windows`)"
_S503 = (
    "still loading (`not_ready`), nothing loaded (`no_models`), the model's queue is full (`queue_full`), or the instance is "
    "shutting down (`shutting_down`): retry after Retry-After seconds"
)
_S504 = "the result was not ready within REQUEST_TIMEOUT_S (`timeout`); the file's windows not yet run were dropped"
_INCLUDE_HELP = (
    f"parts of the result besides the clip's `tags`, comma-separated from {', '.join(INCLUDE_CHOICES)}; `none` for the tags alone "
    f"(default: scores,windows, the fields results had before this one existed)"
)


MAX_TOP_K = 527  # top_k and window_top_k: at most every class of an AudioSet model


def checked_hop(window_s: float, hop_s: Optional[float]) -> float:
    """``hop_s`` (default: half a window), refused (422) when longer than the window."""
    hop = hop_s if hop_s is not None else default_hop_s(window_s)
    if hop > window_s:
        raise ServiceError(422, "invalid_parameter", f"hop_s ({hop:g}) must not exceed window_s ({window_s:g}): audio between windows would go untagged")
    return hop


@dataclass(frozen=True)
class TagRequest:
    model: LoadedModel
    params: TagParams


def tag_request(
    model: Optional[str] = Form(None, max_length=128, description="model name (GET /v1/models); default: the service's default model"),
    top_k: int = Form(10, ge=1, le=MAX_TOP_K, description="tags to return for the clip"),
    window_top_k: int = Form(3, ge=1, le=MAX_TOP_K, description="tags to return for each window"),
    threshold: Optional[float] = Form(None, ge=0.0, le=1.0, description="only tags scoring at least this (the clip's and the windows')"),
    window_s: float = Form(DEFAULT_WINDOW_S, ge=MIN_WINDOW_S, le=MAX_WINDOW_S, description="analysis window in seconds (the models are trained on 10 s)"),
    hop_s: Optional[float] = Form(None, gt=0.0, le=MAX_WINDOW_S, description="step between windows in seconds, at most window_s (default window_s / 2)"),
    include: Optional[str] = Form(None, max_length=200, description=_INCLUDE_HELP, examples=["scores,windows"]),
    registry: ModelRegistry = Depends(ready_registry),
) -> TagRequest:
    """The form fields both routes share, checked, with the model they name."""
    hop = checked_hop(window_s, hop_s)
    parts = parse_include(include)
    loaded = resolve_model(registry, model)
    params = TagParams(top_k=top_k, threshold=threshold, window_s=window_s, hop_s=hop, window_top_k=window_top_k, include=parts)
    return TagRequest(model=loaded, params=params)


async def tag(
    file: UploadFile = File(..., description="the audio file (WAV, FLAC, Ogg, MP3, AIFF, M4A/AAC, WebM, ...), decoded by content whatever its name"),
    request: TagRequest = Depends(tag_request),
    ticket: Optional[IncomingTicket] = Depends(incoming_ticket),
    context: ServiceContext = Depends(get_context),
) -> JSONResponse:
    """Decodes the file, averages it to mono, resamples it to the model's rate, cuts it into `window_s` windows
    every `hop_s` seconds and tags each: the last window ends at the end of the audio (it overlaps its
    predecessor more than `hop_s` says), and a file shorter than one window is zero-padded to one window.
    A class's clip score is its maximum over the windows; `tags` are the `top_k` best clip scores, best first.
    Scores carry 5 significant digits; `include` chooses the large parts of the result: `scores` (every
    class), `windows`, `embedding` (the clip embedding POST /v1/embed returns). A file that is usable but not
    whole (a header announcing more audio than there is) is tagged, and `warnings` says what was wrong.

    ```
    curl -F file=@dog_bark.wav -F top_k=5 http://127.0.0.1:8000/v1/tag
    ```"""
    data = await file.read()
    result = await context.tagger.tag(request.model, data, request.params, ticket)
    result["filename"] = file.filename
    return JSONResponse(result)


async def tag_batch(
    files: List[UploadFile] = File(..., description="the audio files, one form field 'files' each (at most MAX_BATCH_FILES)"),
    request: TagRequest = Depends(tag_request),
    ticket: Optional[IncomingTicket] = Depends(incoming_ticket),
    context: ServiceContext = Depends(get_context),
) -> JSONResponse:
    """The same as POST /v1/tag for each file, with the same settings. A file that fails gets its own error
    entry (with the status it would have had alone); the others are tagged all the same.

    ```
    curl -F files=@a.wav -F files=@b.flac http://127.0.0.1:8000/v1/tag/batch
    ```"""
    limit = context.settings.max_batch_files
    if len(files) > limit:
        raise ServiceError(413, "too_many_files", f"{len(files)} files in one request; the limit is {limit} (MAX_BATCH_FILES)")

    async def one(upload: UploadFile) -> dict:
        try:
            data = await upload.read()
            result = await context.tagger.tag(request.model, data, request.params, ticket)
            return {"filename": upload.filename, "status": 200, "result": result}
        except ServiceError as e:
            context.metrics.refused(e.code, e.status)
            return {"filename": upload.filename, "status": e.status, "error": e.body()}
        except Exception:  # a server fault on one file must not lose the others' results
            log.exception("batch request: file %r failed", upload.filename)
            context.metrics.refused("internal_error", 500)
            return {"filename": upload.filename, "status": 500, "error": {"code": "internal_error", "message": "the server failed on this file; see its log"}}

    results = await asyncio.gather(*(one(f) for f in files))
    return JSONResponse({"model": request.model.name, "results": list(results)})


def build_router(limits: Mapping[str, BodyLimit]) -> APIRouter:
    """The two tagging routes with these body limits (``service.limits.body_limits(settings)``)."""
    router = APIRouter(tags=["tagging"], dependencies=[Security(api_key_scheme)], route_class=CountedRoute)
    one, batch = limits["/v1/tag"], limits["/v1/tag/batch"]
    router.add_api_route(
        "/v1/tag",
        tag,
        methods=["POST"],
        response_model=None,
        summary="Tag one audio file",
        description=f"{inspect.cleandoc(tag.__doc__)}\n\nBody limit: {one.bytes} bytes ({one.why}).",
        responses={
            200: {"model": TagResponse, "description": "the file's tags"},
            **error_responses(400, 401, 404, 413, 415, 422, 503, 504, s413=_S413, s503=_S503, s504=_S504),
        },
    )
    router.add_api_route(
        "/v1/tag/batch",
        tag_batch,
        methods=["POST"],
        response_model=None,
        summary="Tag several audio files",
        description=f"{inspect.cleandoc(tag_batch.__doc__)}\n\nBody limit: {batch.bytes} bytes ({batch.why}).",
        responses={
            200: {"model": BatchTagResponse, "description": "one result or one error per file, in upload order"},
            **error_responses(401, 404, 413, 422, 503, s413="the body is over the route's limit (`payload_too_large`) or holds more than MAX_BATCH_FILES files (`too_many_files`)", s503=_S503),
        },
    )
    return router
