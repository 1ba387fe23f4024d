"""The training checkpoint (``last.pt``): format, atomic save, checked read, RNG states.

A checkpoint is one ``torch.save``d dict of tensors and plain Python (read back with
``weights_only=True``: no code is unpickled). Its keys: ``format``, ``version``, the
run's ``config``, what a release needs (``arch``, ``model_args``, ``frontend``,
``labels``, ``label_source``), the run state (see ``pipelines.train_state.RunState``:
``model``, ``optimizer``, ``scheduler``, ``scaler``, ``ema``, ``epoch``,
``step_in_epoch``, ``global_step``), ``world_size``, every rank's ``rng`` states, every rank's
``ops_routes`` (the kernel routes autotuning and timing picked, ``audio_dcls.ops.config.routes_state``;
absent in checkpoints written before they were recorded) and a ``note``.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Dict

import numpy as np
import torch

from audio_dcls.io import atomic_open, remove_stale_temp_files
from pipelines.train_config import config_from_dict

CHECKPOINT_FORMAT = "audio_dcls.train_checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_FILE = "last.pt"


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged or from another run."""


def rng_state() -> Dict:
    """Python's, numpy's, torch's (and CUDA's) global RNG states, as tensors and plain values."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: Dict) -> None:
    """``torch.save`` through audio_dcls.io.atomic_open: the old checkpoint stays until the new one is whole."""
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)


def remove_stale_checkpoint_temps(folder: Path) -> int:
    """Temporary files of a process killed while it wrote a checkpoint."""
    return remove_stale_temp_files(folder, CHECKPOINT_FILE)


def read_checkpoint(path: Path) -> Dict:
    """Load a training checkpoint; ``config_obj`` holds its config as a TrainConfig."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or foreign objects
        raise CheckpointError(f"{path}: not a readable training checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an audio_dcls training checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')}, this code reads {CHECKPOINT_VERSION}")
    ckpt["config_obj"] = config_from_dict(ckpt["config"])
    return ckpt
