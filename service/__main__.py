"""Run the tagging service: ``python -m service`` (or ``make serve``).

Settings come from environment variables (see service/settings.py); the
flags below override the variables of the same name::

    python -m service --models-dir runs/release --port 8000
    MODELS_DIR=/models API_KEY=secret TORCH_THREADS=4 python -m service --host 0.0.0.0
    python -m service --help

One process serves every model; it runs its own inference threads, so start
one process per machine (or container) rather than several uvicorn workers.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path
from typing import List, NoReturn, Optional

from .settings import DEFAULT_MODELS_DIR, LOG_LEVELS, Settings, SettingsError

PROG = "python -m service"
FLAGS = ("host", "port", "models_dir", "log_level")  # settings that also have a command-line flag


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    others = ", ".join(f.name.upper() for f in fields(Settings) if f.name not in FLAGS)
    parser = _Parser(
        prog=PROG,
        description="Serve every release folder under MODELS_DIR over HTTP: POST /v1/tag, the web page at /, the API docs at /docs.",
        epilog=f"Every other setting is an environment variable: {others} (see the README's Tagging service section).",
    )
    parser.add_argument("--host", help="address to bind (env HOST; default 127.0.0.1, 0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, help="port to listen on (env PORT; default 8000)")
    parser.add_argument("--models-dir", type=Path, metavar="DIR", help=f"folder of release folders, one model each (env MODELS_DIR; default {DEFAULT_MODELS_DIR})")
    parser.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, help="log level (env LOG_LEVEL; default info)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {name: getattr(args, name) for name in FLAGS if getattr(args, name) is not None}
    try:
        settings = Settings.from_env(**overrides)
    except SettingsError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    import uvicorn  # only now: --help and bad arguments answer without importing the server (and torch)
    from uvicorn.config import TRACE_LOG_LEVEL

    level = TRACE_LOG_LEVEL if settings.log_level == "trace" else settings.log_level.upper()  # "trace" is uvicorn's own level
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
