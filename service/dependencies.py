"""What the routes depend on: the app's parts, a ready registry, a checked model name, the key scheme.

One :class:`ServiceContext` per app (``app.state.context``) holds the parts
``create_app`` builds; the route modules reach it through
:func:`get_context`, so two apps in one process never share anything.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from audio_dcls.checkpoint import RELEASE_NAME

from .errors import ServiceError
from .incoming import IncomingRequests
from .metrics import ServiceMetrics
from .registry import LoadedModel, ModelRegistry
from .settings import Settings
from .tagging import UploadTagger

# Declares the key in the OpenAPI document (Swagger's Authorize button, a lock on each route that
# needs it). The check itself is done by service.guard before any of the body is read, so the
# credentials this yields are not looked at again here.
api_key_scheme = HTTPBearer(
    scheme_name="APIKey",
    description="Needed when the service runs with API_KEY set: send 'Authorization: Bearer <API_KEY>'. /health/*, /docs, /redoc and /openapi.json never need it.",
    auto_error=False,
)


@dataclass(frozen=True)
class ServiceContext:
    settings: Settings
    metrics: ServiceMetrics
    registry: ModelRegistry
    tagger: UploadTagger
    incoming: IncomingRequests  # tagging requests on their way to a worker (service.incoming)


def get_context(request: Request) -> ServiceContext:
    return request.app.state.context


def not_ready_error(registry: ModelRegistry) -> ServiceError:
    # "no_models" once loading has finished with nothing to serve (retrying will not help until
    # MODELS_DIR is fixed and the service restarted); "not_ready" while it is still loading.
    code = "no_models" if registry.state == "failed" else "not_ready"
    return ServiceError(503, code, f"the service is not ready: {registry.not_ready_reason()}", {"Retry-After": "5"})


def ready_registry(context: ServiceContext = Depends(get_context)) -> ModelRegistry:
    if not context.registry.ready:
        raise not_ready_error(context.registry)
    return context.registry


def check_model_name(name: str) -> str:
    if not RELEASE_NAME.match(name):
        raise ServiceError(422, "invalid_parameter", f"model: {name!r} is not a valid model name (letters, digits, '.', '_', '-')")
    return name


def resolve_model(registry: ModelRegistry, name: Optional[str]) -> LoadedModel:
    """The model ``name`` (None: the default model); 422 for a malformed name, 404 for an unknown one."""
    if name is not None:
        check_model_name(name)
    loaded = registry.get(name)
    if loaded is None:
        available = ", ".join(sorted(registry.models)) or "none"
        raise ServiceError(404, "model_not_found", f"no model named {name!r} (available: {available})")
    return loaded
