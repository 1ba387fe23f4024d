"""A tiny, learnable feature store on disk for the training/evaluation tests.

Written with the feature store's own writer (plan -> shards -> finalize), so the
trainer reads it exactly as it reads a precomputed AudioSet split. Each class
raises its own band of mel bins, so a model can learn it in a few steps.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from audio_dcls.features import LogMelConfig
from audio_dcls.io import atomic_write_json
from audio_dcls.labels import LabelVocabulary
from pipelines.feature_store import SHARD_DIR, Plan, finalize_store, write_shard

TINY_FRAMES = 128  # 1.27 s at hop 320: 8 time steps after the (2, 16) stem, 1 after three downsamplings
TINY_MODEL_ARGS = {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}


def tiny_frontend(frames: int = TINY_FRAMES) -> LogMelConfig:
    fe = LogMelConfig(clip_seconds=(frames - 1) * 320 / 32000)
    assert fe.num_frames == frames
    return fe


def tiny_vocabulary(classes: int) -> LabelVocabulary:
    return LabelVocabulary([f"/t/tiny{i}" for i in range(classes)], [f"tiny class {i}" for i in range(classes)])


def make_tiny_store(folder: Path, n: int = 48, classes: int = 4, frames: int = TINY_FRAMES, seed: int = 0, shard_size: int = 16, frontend: LogMelConfig | None = None) -> Path:
    """``frontend``: the settings the store records (default: tiny_frontend(frames))."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, classes)) < 0.35).astype(np.uint8)
    labels[np.arange(n), rng.integers(0, classes, n)] = 1  # every clip has a label
    feats = rng.normal(0.0, 0.5, (n, 128, frames)).astype(np.float32)
    band = 128 // classes
    for c in range(classes):
        feats[labels[:, c] == 1, c * band : (c + 1) * band, :] += 1.5
    vocab = tiny_vocabulary(classes)
    ids = [f"clip{seed}_{i:04d}" for i in range(n)]
    plan = Plan(frontend or tiny_frontend(frames), vocab, {"kind": "tiny-test", "seed": seed}, f"tiny-{seed}-{n}-{classes}", n, shard_size)
    (folder / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "plan.json", plan.to_dict())
    for k in range(plan.num_shards):
        sl = slice(k * shard_size, (k + 1) * shard_size)
        write_shard(folder, k, ids[sl], feats[sl].astype(np.float16), labels[sl], [])
    finalize_store(folder)
    return folder
