"""The service's routes, one APIRouter per concern.

health and models are fixed; the tagging routes carry body limits taken from
the settings, so :func:`build_routers` declares them for each app.
"""
from typing import List, Mapping

from fastapi import APIRouter

from ..limits import BodyLimit
from . import health, models, tag


def build_routers(limits: Mapping[str, BodyLimit]) -> List[APIRouter]:
    """``limits``: service.limits.body_limits(settings)."""
    return [health.router, models.router, tag.build_router(limits)]


__all__ = ["build_routers"]
