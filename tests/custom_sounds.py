"""Your-own-sounds datasets for the tests: real WAV files and ``path,labels`` CSVs on disk.

Each label gets its own tone (a frequency derived from its name), so a tiny model can
tell them apart in a few steps; a clip mixes the tones of its labels over a little noise.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import soundfile as sf

SR = 16000  # written at 16 kHz: the ingest resamples to the front end's 32 kHz


def label_frequency(label: str) -> float:
    h = int(hashlib.sha256(label.encode()).hexdigest()[:8], 16)
    return 150.0 * 2 ** ((h % 1000) / 1000 * 5.5)  # 150 Hz .. 6.8 kHz, log-spaced


def write_clip(path: Path, labels: Sequence[str], seconds: float = 1.3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    y = 0.02 * rng.standard_normal(t.shape)
    for lab in labels:
        y += 0.25 * np.sin(2 * np.pi * label_frequency(lab) * t + rng.uniform(0, 2 * np.pi))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, y.astype(np.float32), SR)
    return path


def write_dataset(folder: Path, splits: Dict[str, Sequence[Sequence[str]]], seconds: float = 1.3, audio_subdir: str = "audio") -> Dict[str, Path]:
    """``splits``: split name -> the labels of each clip. Writes ``folder/audio_subdir/<split>_<i>.wav``
    and ``folder/<split>.csv`` (paths relative to the CSV's folder); returns the CSV of each split."""
    folder = Path(folder)
    out = {}
    for s, (split, clips) in enumerate(splits.items()):
        rows = ["path,labels"]
        for i, labels in enumerate(clips):
            rel = f"{audio_subdir}/{split}_{i:03d}.wav"
            write_clip(folder / rel, labels, seconds, seed=1000 * s + i)
            field = ";".join(labels)
            rows.append(f'{rel},"{field}"' if "," in field else f"{rel},{field}")
        out[split] = folder / f"{split}.csv"
        out[split].write_text("\n".join(rows) + "\n")
    return out


def balanced_clips(labels: Sequence[str], per_label: int, seed: int = 0, second_label: float = 0.3) -> list:
    """Each label leads ``per_label`` clips; some carry a second label."""
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(per_label):
        for lab in labels:
            extra = [str(rng.choice([x for x in labels if x != lab]))] if rng.random() < second_label and len(labels) > 1 else []
            clips.append([lab, *extra])
    return clips
