"""The audio_dcls tagging service (FastAPI + uvicorn): ``python -m service`` or ``make serve``."""
from .settings import Settings

__all__ = ["Settings", "create_app"]


def create_app(settings=None):
    """Build the FastAPI app (imported lazily so ``Settings`` stays cheap to import)."""
    from .app import create_app as _create_app

    return _create_app(settings)
