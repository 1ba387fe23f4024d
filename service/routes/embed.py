"""Embeddings: the vector each window's classifier reads, and the clip's mean of them.

The file goes through the same decoding, windows and batching worker as
POST /v1/tag (the worker's one forward pass gives every window its scores and
its embedding), so tagging and embedding requests share batches.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Mapping, Optional

from fastapi import APIRouter, Depends, File, Form, Security, UploadFile
from fastapi.responses import JSONResponse

from audio_dcls.windowing import DEFAULT_WINDOW_S, MAX_WINDOW_S, MIN_WINDOW_S

from ..dependencies import ServiceContext, api_key_scheme, get_context, ready_registry, resolve_model
from ..incoming import CountedRoute, IncomingTicket, incoming_ticket
from ..limits import BodyLimit
from ..registry import LoadedModel, ModelRegistry
from ..schemas import EmbedResponse, error_responses
from ..tagging import EmbedParams
from .tag import _S413, _S503, _S504, checked_hop  # the same upload errors as POST /v1/tag


@dataclass(frozen=True)
class EmbedRequest:
    model: LoadedModel
    params: EmbedParams


def embed_request(
    model: Optional[str] = Form(None, max_length=128, description="model name (GET /v1/models); default: the service's default model"),
    window_s: float = Form(DEFAULT_WINDOW_S, ge=MIN_WINDOW_S, le=MAX_WINDOW_S, description="analysis window in seconds (the models are trained on 10 s)"),
    hop_s: Optional[float] = Form(None, gt=0.0, le=MAX_WINDOW_S, description="step between windows in seconds, at most window_s (default window_s / 2)"),
    per_window: bool = Form(False, description="also return each window's embedding"),
    registry: ModelRegistry = Depends(ready_registry),
) -> EmbedRequest:
    hop = checked_hop(window_s, hop_s)
    return EmbedRequest(model=resolve_model(registry, model), params=EmbedParams(window_s=window_s, hop_s=hop, per_window=per_window))


async def embed(
    file: UploadFile = File(..., description="the audio file (WAV, FLAC, Ogg, MP3, AIFF, M4A/AAC, WebM, ...), decoded by content whatever its name"),
    request: EmbedRequest = Depends(embed_request),
    ticket: Optional[IncomingTicket] = Depends(incoming_ticket),
    context: ServiceContext = Depends(get_context),
) -> JSONResponse:
    """Decodes and windows the file as POST /v1/tag does and returns the model's embedding of it: the vector its
    classifier reads (pooled, normalised features; `embedding_dim` long: 768 for ConvNeXt-T, 512 for
    ConvFormer-S18, 1024 for FastViT-SA24). The clip's `embedding` is the mean over its windows; with
    `per_window=true` each window carries its own.

    ```
    curl -F file=@dog_bark.wav -F per_window=true http://127.0.0.1:8000/v1/embed
    ```"""
    data = await file.read()
    result = await context.tagger.embed(request.model, data, request.params, ticket)
    result["filename"] = file.filename
    return JSONResponse(result)


def build_router(limits: Mapping[str, BodyLimit]) -> APIRouter:
    """POST /v1/embed with its body limit (``service.limits.body_limits(settings)``)."""
    router = APIRouter(tags=["embeddings"], dependencies=[Security(api_key_scheme)], route_class=CountedRoute)
    limit = limits["/v1/embed"]
    router.add_api_route(
        "/v1/embed",
        embed,
        methods=["POST"],
        response_model=None,
        summary="Embed one audio file",
        description=f"{inspect.cleandoc(embed.__doc__)}\n\nBody limit: {limit.bytes} bytes ({limit.why}).",
        responses={
            200: {"model": EmbedResponse, "description": "the file's embedding"},
            **error_responses(400, 401, 404, 413, 415, 422, 503, 504, s413=_S413, s503=_S503, s504=_S504),
        },
    )
    return router
