"""Checkpoints in other projects' layouts, with random weights, for the weight-conversion tests.

``dcls_audio_state_dicts.json`` (next to this file) lists the exact key layout
of DCLS-Audio's four released models. ``random_state`` fills such a layout with
random tensors of sensible size (so that a forward pass stays finite and
non-trivial), giving keys marked ``same_tensor_as`` the very same tensor, as
DCLS-Audio's tied positions are; ``save_dcls_audio`` writes them the way
DCLS-Audio's ``utils.save_model`` does.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Dict, List, Optional

import torch

LAYOUT_FILE = Path(__file__).with_name("dcls_audio_state_dicts.json")
DCLS_LIMIT = 11  # 23 // 2: the furthest a tap centre may sit from the kernel centre


def layouts() -> Dict[str, dict]:
    return json.loads(LAYOUT_FILE.read_text())


def _random(key: str, shape: List[int], g: torch.Generator) -> torch.Tensor:
    if key.endswith("num_batches_tracked"):
        return torch.tensor(1234, dtype=torch.long)
    n = lambda: torch.randn(shape, generator=g)  # noqa: E731
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(shape, generator=g)  # noqa: E731
    if key.endswith("running_var"):
        return u(0.5, 1.5)
    if key.endswith("running_mean"):
        return 0.1 * n()
    if key.endswith(".P"):
        return (3.0 * n()).clamp(-DCLS_LIMIT, DCLS_LIMIT)
    if key.endswith(".SIG"):
        return u(-1.0, 1.0)
    if "gamma" in key or "layer_scale" in key:
        return 0.1 * n()
    if key.endswith(".scale"):  # StarReLU scales and ConvFormer res_scale
        return 1.0 + 0.1 * n()
    if key.endswith(".bias"):
        return 0.1 * n()
    if len(shape) == 1:  # norm weights
        return 1.0 + 0.1 * n()
    fan_in = math.prod(shape[1:])
    return n() / math.sqrt(fan_in)


def random_state(entries: List[dict], seed: int = 0, overrides: Optional[Dict[str, list]] = None) -> Dict[str, torch.Tensor]:
    """A state dict in ``entries``' layout; ``overrides`` replaces shapes (or drops keys: None)."""
    g = torch.Generator().manual_seed(seed)
    overrides = overrides or {}
    state: Dict[str, torch.Tensor] = {}
    for e in entries:
        key, shape = e["key"], overrides.get(e["key"], e["shape"])
        if shape is None:
            continue
        if "same_tensor_as" in e and e["same_tensor_as"] in state:
            state[key] = state[e["same_tensor_as"]]
        else:
            state[key] = _random(key, shape, g)
    return state


def save_dcls_audio(path: Path, upstream_model: str, state: Dict[str, torch.Tensor], ema: Optional[Dict[str, torch.Tensor]] = None) -> Path:
    """``torch.save`` as DCLS-Audio does: weights, optimizer, epoch, scaler and the argparse flags."""
    names = list(state)
    checkpoint = {
        "model": state,
        "optimizer": {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3)}},
                      "param_groups": [{"lr": 4e-3, "weight_decay": 0.05, "params": list(range(len(names)))}]},
        "epoch": 59,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 0},
        "args": argparse.Namespace(model=upstream_model, lr=4e-3, drop_path=0.4, batch_size=128, opt="adamw",
                                   data_set="AUDIOSET", nb_classes=527, finetune="", use_amp=False),
    }
    if ema is not None:
        checkpoint["model_ema"] = ema
    torch.save(checkpoint, path)
    return path
