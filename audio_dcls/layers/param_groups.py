"""Optimizer parameter groups for models with DCLS layers.

The DCLS recipe trains tap positions and spreads with a larger learning rate
and no weight decay. Everything one-dimensional (biases, norm affines, layer
scales) gets no weight decay, as in timm's ``param_groups_weight_decay``.
"""
from __future__ import annotations

from typing import Dict, List

from torch import nn

from .dcls_conv import _DclsNd


def dcls_param_groups(model: nn.Module, lr: float, weight_decay: float, position_lr_scale: float = 5.0) -> List[Dict]:
    """Three groups: decayed weights, undecayed 1-D tensors, positions/Σ.

    Each group carries ``lr`` and ``lr_scale``: timm's schedulers multiply the
    scheduled rate by ``lr_scale``, so the 5× ratio survives scheduling.
    """
    position_ids = set()
    for module in model.modules():
        if isinstance(module, _DclsNd):
            position_ids.add(id(module.P))
            if module.SIG is not None:
                position_ids.add(id(module.SIG))
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay, positions = [], [], []
    seen = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        if id(param) in position_ids:
            positions.append(param)
        elif param.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay, "lr_scale": 1.0, "group": "decay"},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, "lr_scale": 1.0, "group": "no_decay"},
        {"params": positions, "lr": lr * position_lr_scale, "weight_decay": 0.0, "lr_scale": position_lr_scale, "group": "positions"},
    ]
    return [g for g in groups if g["params"]]
