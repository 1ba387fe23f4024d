"""The models served and their label vocabularies."""
from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Depends, Query, Security
from fastapi.responses import JSONResponse

from ..dependencies import api_key_scheme, check_model_name, ready_registry, resolve_model
from ..errors import ServiceError
from ..registry import ModelRegistry, labels_payload
from ..schemas import LabelList, ModelDetails, ModelList, error_responses


async def list_models(registry: ModelRegistry = Depends(ready_registry)) -> dict:
    """Every model served (name, architecture, parameter counts, label source, sample rate), the default model,
    and the release folders that failed to load."""
    return {"default": registry.default_name, "models": [registry.models[n].summary() for n in sorted(registry.models)], "failed": dict(registry.failed)}


async def model_details(name: str, registry: ModelRegistry = Depends(ready_registry)) -> JSONResponse:
    """Its labels, front-end settings, parameter counts (as trained and after folding), training summary and
    batching settings."""
    loaded = registry.models.get(check_model_name(name))
    if loaded is None:
        available = ", ".join(sorted(registry.models))
        raise ServiceError(404, "model_not_found", f"no model named {name!r} (available: {available})")
    details = loaded.details()
    details["default"] = name == registry.default_name
    return JSONResponse(details)


async def labels(
    model: Optional[str] = Query(None, max_length=128, description="model name (GET /v1/models); default: the default model"),
    registry: ModelRegistry = Depends(ready_registry),
) -> JSONResponse:
    """Index, AudioSet MID and display name of every class, in the order of the `scores` a tagging result carries."""
    loaded = resolve_model(registry, model)
    r = loaded.release
    return JSONResponse({"model": loaded.name, "label_source": r.label_source, "num_classes": len(r.labels), "labels": labels_payload(r.labels)})


def build_router() -> APIRouter:
    # model_details and labels send pre-built JSON (527 labels): their models document, not validate.
    router = APIRouter(tags=["models"], dependencies=[Security(api_key_scheme)])
    router.add_api_route(
        "/v1/models", list_models, methods=["GET"], response_model=ModelList, summary="List the models", response_description="the models served", responses=error_responses(401, 503)
    )
    router.add_api_route(
        "/v1/models/{name}",
        model_details,
        methods=["GET"],
        response_model=None,
        summary="One model in detail",
        responses={200: {"model": ModelDetails, "description": "the model"}, **error_responses(401, 404, 422, 503, s422="the name is not a valid model name")},
    )
    router.add_api_route(
        "/v1/labels",
        labels,
        methods=["GET"],
        response_model=None,
        summary="A model's label vocabulary",
        responses={200: {"model": LabelList, "description": "the labels, in score order"}, **error_responses(401, 404, 422, 503)},
    )
    return router
