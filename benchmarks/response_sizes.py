"""Bytes of a POST /v1/tag answer for a 7 s clip and a 7-minute file, per request form, plain and gzipped.

Starts the service in this process (service.server.BackgroundServer, real HTTP
on 127.0.0.1) with a random-initialised ``convnext_atto_dcls_audio`` release
(527 AudioSet labels; the sizes depend on the label count and the number of
windows, not on the weights), sends both files with each set of form fields and
prints the JSON size as sent without compression (``Accept-Encoding: identity``)
and with gzip, and the ratio of each to the default request's plain size, the
baseline measured in the same run. Form fields an older service does not know
are ignored by it, so the same command run with an older checkout on the
import path measures "before"::

    .venv/bin/python benchmarks/response_sizes.py
    PYTHONPATH=/path/to/old/checkout .venv/bin/python benchmarks/response_sizes.py

What bounds it: ``scores`` is one number per class (527) and ``windows`` grows
with the file (83 windows for 7 minutes at the default 10 s / 5 s); gzip
shrinks the repeated keys and the 5-digit numbers.
"""
from __future__ import annotations

import io
import shlex
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_service import build_release  # noqa: E402

FORMS = [
    ("default", {}),
    ("top_k=527", {"top_k": "527"}),
    ("include=windows", {"include": "windows"}),
    ("include=scores", {"include": "scores"}),
    ("include=none", {"include": "none"}),
]


def flac(seconds: float, sr: int = 16000) -> bytes:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    y = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.shape)
    buf = io.BytesIO()
    sf.write(buf, y.astype(np.float32), sr, format="FLAC")
    return buf.getvalue()


def main() -> int:
    from service.server import BackgroundServer
    from service.settings import Settings

    files = {"7 s clip": flac(7), "7-minute file": flac(420)}
    with tempfile.TemporaryDirectory(prefix="response-sizes-") as tmp:
        models = build_release(Path(tmp), "convnext_atto_dcls_audio")
        with BackgroundServer(Settings(models_dir=models, torch_threads=2)) as server, httpx.Client(base_url=server.url, timeout=300) as c:
            print(f"{'file':>14} | {'request':>16} | {'JSON bytes':>10} | {'gzipped':>9} | {'plain / default':>15} | {'gzip / default':>14}")
            for name, data in files.items():
                baseline = None
                for label, form in FORMS:
                    plain = c.post("/v1/tag", files={"file": ("a.flac", data)}, data=form, headers={"Accept-Encoding": "identity"})
                    zipped = c.post("/v1/tag", files={"file": ("a.flac", data)}, data=form, headers={"Accept-Encoding": "gzip"})
                    assert plain.status_code == zipped.status_code == 200, plain.text
                    size = len(plain.content)
                    wire = int(zipped.headers["content-length"])  # as sent: compressed when the server compresses
                    baseline = baseline or size
                    print(f"{name:>14} | {label:>16} | {size:>10,} | {wire:>9,} | {size / baseline:>15.3f} | {wire / baseline:>14.3f}")
    print("reproduce: " + " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/response_sizes.py"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
