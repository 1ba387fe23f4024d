"""Run the tagging service: ``python -m service`` (or ``make serve``).

Settings come from environment variables (see service/settings.py), e.g.::

    MODELS_DIR=runs/release PORT=8000 python -m service
    MODELS_DIR=/models HOST=0.0.0.0 API_KEY=secret TORCH_THREADS=4 python -m service

One process serves every model; it runs its own inference threads, so start
one process per machine (or container) rather than several uvicorn workers.
"""
from __future__ import annotations

import logging
import sys

from .settings import Settings, SettingsError


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as e:
        print(f"service: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from .app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
