"""What the service accepts, read from its settings, so a client can refuse a file before uploading it."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Security

from audio_dcls.windowing import DEFAULT_WINDOW_S, MAX_WINDOW_S, MIN_WINDOW_S

from ..dependencies import ServiceContext, api_key_scheme, get_context
from ..limits import body_limits
from ..schemas import Limits, error_responses
from .tag import MAX_TOP_K


async def service_limits(context: ServiceContext = Depends(get_context)) -> dict:
    """The largest file, the most files per batch request, the longest audio, the most windows per file, the
    time limit per request and the body limit of each upload route, from the service's settings (the web page
    checks files against them before it uploads them)."""
    s = context.settings
    return {
        "max_upload_bytes": s.max_upload_bytes,
        "max_batch_files": s.max_batch_files,
        "max_audio_seconds": s.max_audio_seconds,
        "max_windows": s.max_windows,
        "request_timeout_s": s.request_timeout_s,
        "body_limits": {path: limit.bytes for path, limit in body_limits(s).items()},
        "window_s": {"min": MIN_WINDOW_S, "max": MAX_WINDOW_S, "default": DEFAULT_WINDOW_S},
        "max_top_k": MAX_TOP_K,
    }


def build_router() -> APIRouter:
    router = APIRouter(tags=["tagging"], dependencies=[Security(api_key_scheme)])
    router.add_api_route(
        "/v1/limits", service_limits, methods=["GET"], response_model=Limits, summary="What the service accepts", response_description="the limits", responses=error_responses(401)
    )
    return router
