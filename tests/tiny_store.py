"""Tiny, learnable stores on disk for the training/evaluation tests: log-mels or waveforms.

Written with the store's own writer (plan -> shards -> finalize), so the trainer
reads them exactly as it reads a precomputed AudioSet split. In a log-mel store each
class raises its own band of mel bins; in a waveform store each class is a tone two
octaves from the next (speed perturbation moves a pitch by at most x2 or /1.5, so the
classes stay apart), over noise. A model can learn either in a few steps.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from audio_dcls.features import LogMelConfig
from audio_dcls.io import atomic_write_json
from audio_dcls.labels import LabelVocabulary
from pipelines.feature_store import SHARD_DIR, WAVEFORM, ClipLayout, Plan, finalize_store, to_pcm16, write_shard

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


TONES_HZ = (200.0, 800.0, 3200.0, 9000.0)  # class c of a tiny waveform store


def make_tiny_waveform_store(folder: Path, n: int = 48, classes: int = 4, frames: int = TINY_FRAMES, seed: int = 0, shard_size: int = 16) -> Path:
    """A waveform store of n clips of (frames - 1) * 320 samples at 32 kHz (int16, 81 KB per clip)."""
    folder = Path(folder)
    fe = tiny_frontend(frames)
    layout = ClipLayout(WAVEFORM, fe)
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, classes)) < 0.35).astype(np.uint8)
    labels[np.arange(n), rng.integers(0, classes, n)] = 1
    t = np.arange(layout.num_samples) / fe.sample_rate
    waves = rng.normal(0.0, 0.01, (n, layout.num_samples))
    for c in range(classes):
        on = labels[:, c] == 1
        phase = rng.uniform(0, 2 * np.pi, (int(on.sum()), 1))
        waves[on] += 0.2 * np.sin(2 * np.pi * TONES_HZ[c % len(TONES_HZ)] * t + phase)
    ids = [f"wave{seed}_{i:04d}" for i in range(n)]
    plan = Plan(fe, tiny_vocabulary(classes), {"kind": "tiny-test", "seed": seed}, f"tiny-wave-{seed}-{n}-{classes}", n, shard_size, kind=WAVEFORM)
    (folder / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "plan.json", plan.to_dict())
    for k in range(plan.num_shards):
        sl = slice(k * shard_size, (k + 1) * shard_size)
        write_shard(folder, k, ids[sl], to_pcm16(waves[sl]), labels[sl], [], layout=layout)
    finalize_store(folder)
    return folder
