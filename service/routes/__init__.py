"""The service's routes, one APIRouter per concern.

Each module declares its routes in a ``build_router`` function (the endpoints
are module-level functions), so every app gets routers of its own; the
tagging routes quote the body limits taken from the settings.
"""
from typing import List, Mapping

from fastapi import APIRouter

from ..limits import BodyLimit
from . import embed, health, limits, models, tag


def build_routers(body_limits: Mapping[str, BodyLimit]) -> List[APIRouter]:
    """``body_limits``: service.limits.body_limits(settings)."""
    return [health.build_router(), models.build_router(), tag.build_router(body_limits), embed.build_router(body_limits), limits.build_router()]


__all__ = ["build_routers"]
