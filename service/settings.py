"""Service settings: one frozen dataclass, read from environment variables.

Every field has an environment variable of the same name in upper case
(``MODELS_DIR``, ``MAX_BATCH_SIZE``, ...). ``Settings.from_env()`` parses and
checks them and fails with one readable line on a bad value, so a typo in a
compose file stops the container at start instead of surfacing as odd
behaviour later.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping, Optional

# Where `make train-audioset` writes its release folders (relative to the working directory).
DEFAULT_MODELS_DIR = "runs/release"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's names


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    models_dir: Path = Path(DEFAULT_MODELS_DIR)  # folder whose sub-folders are release folders (one model each)
    default_model: Optional[str] = None  # model used when a request names none; None: the first name in sorted order
    api_key: Optional[str] = None  # when set, every route but /health/*, the web page and the API docs needs "Authorization: Bearer <key>"
    device: str = "cpu"  # torch device the models run on ("cpu", "cuda", "cuda:1")
    torch_threads: int = min(4, os.cpu_count() or 1)  # intra-op threads of each inference worker (torch.set_num_threads)
    max_batch_size: int = 16  # most windows in one forward pass; 1 turns dynamic batching off
    max_wait_ms: float = 10.0  # how long a worker waits for more work to fill a batch once it holds some
    queue_size: int = 64  # requests waiting per model before new ones get 503 + Retry-After
    max_upload_bytes: int = 32 * 1024 * 1024  # largest accepted file (each file of a batch request)
    max_audio_seconds: float = 600.0  # longest accepted audio (decoded duration)
    max_batch_files: int = 16  # most files in one /v1/tag/batch request
    max_windows: int = 512  # most analysis windows one file may be cut into (duration, window_s and hop_s decide)
    decode_threads: int = 4  # uploads decoded at the same time (decoding runs in threads, never in the event loop)
    warmup: bool = True  # run a few forward passes per model before reporting ready
    host: str = "127.0.0.1"  # `python -m service` binds here (0.0.0.0 inside a container)
    port: int = 8000
    log_level: str = "info"  # one of LOG_LEVELS

    def __post_init__(self):
        positive = ("torch_threads", "max_batch_size", "queue_size", "max_upload_bytes", "max_batch_files", "max_windows", "decode_threads")
        for name in positive:
            if getattr(self, name) < 1:
                raise SettingsError(f"{name.upper()} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise SettingsError(f"MAX_WAIT_MS must be >= 0, got {self.max_wait_ms}")
        if self.max_audio_seconds <= 0:
            raise SettingsError(f"MAX_AUDIO_SECONDS must be > 0, got {self.max_audio_seconds}")
        if not (0 < self.port < 65536):
            raise SettingsError(f"PORT must be in 1-65535, got {self.port}")
        if self.log_level.lower() not in LOG_LEVELS:
            raise SettingsError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        object.__setattr__(self, "log_level", self.log_level.lower())
        if self.api_key is not None and not self.api_key.strip():
            object.__setattr__(self, "api_key", None)  # API_KEY="" means no key, not an empty key
        object.__setattr__(self, "models_dir", Path(self.models_dir))

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **overrides) -> "Settings":
        """Settings from ``environ`` (default ``os.environ``); keyword overrides win."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(f.name.upper())
            if raw is None or f.name in overrides:
                continue
            values[f.name] = _parse(f.name, raw, f.default)
        values.update(overrides)
        return cls(**values)


def _parse(name: str, raw: str, default):
    raw = raw.strip()
    env = name.upper()
    if isinstance(default, bool):
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{env}={raw!r}: expected true/false")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{env}={raw!r}: expected an integer") from None
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"{env}={raw!r}: expected a number") from None
    if isinstance(default, Path):
        return Path(raw)
    if default is None:
        return raw or None  # optional strings: empty means unset
    return raw
