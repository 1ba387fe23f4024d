"""Liveness, readiness and the Prometheus metrics.

/health/* never need the API key (probes carry none); /metrics does, since it
names the models and counts the traffic.
"""
from __future__ import annotations

from fastapi import APIRouter, Depends, Security
from fastapi.responses import Response

from ..dependencies import ServiceContext, api_key_scheme, get_context, not_ready_error
from ..schemas import Liveness, Readiness, error_responses

_METRICS_EXAMPLE = """\
# HELP audio_dcls_ready 1 once every model is loaded and warmed up
# TYPE audio_dcls_ready gauge
audio_dcls_ready 1.0
"""


async def live() -> dict:
    """Answers at once while the process runs, also while the models are still loading."""
    return {"status": "alive"}


async def ready(context: ServiceContext = Depends(get_context)) -> dict:
    """Ready once every release folder under MODELS_DIR has been tried, the loaded ones warmed up, and their
    inference workers run. Folders that failed to load are listed under `failed`; the others are served."""
    registry = context.registry
    if not registry.ready:
        raise not_ready_error(registry)
    return {"status": "ready", "models": sorted(registry.models), "default_model": registry.default_name, "failed": dict(registry.failed)}


async def metrics(context: ServiceContext = Depends(get_context)) -> Response:
    """Requests and latency by route template, queue depth, batch sizes and forward-pass time per model,
    decode errors by reason, queue rejections, seconds of audio tagged, readiness."""
    body, content_type = context.metrics.render()
    return Response(body, media_type=content_type)


def build_router() -> APIRouter:
    router = APIRouter(tags=["health"])
    router.add_api_route("/health/live", live, methods=["GET"], response_model=Liveness, summary="Liveness", response_description="the process runs")
    router.add_api_route(
        "/health/ready",
        ready,
        methods=["GET"],
        response_model=Readiness,
        summary="Readiness",
        response_description="every model is loaded, warmed up and has its worker running",
        responses=error_responses(503, s503="still loading (`not_ready`), or no release folder could be loaded (`no_models`)"),
    )
    router.add_api_route(
        "/metrics",
        metrics,
        methods=["GET"],
        summary="Prometheus metrics",
        response_class=Response,  # no media type of its own: the 200 is text/plain, the 401 JSON, as declared below
        dependencies=[Security(api_key_scheme)],
        responses={
            200: {"description": "the Prometheus text exposition format", "content": {"text/plain": {"schema": {"type": "string"}, "example": _METRICS_EXAMPLE}}},
            **error_responses(401),
        },
    )
    return router
