"""Optimizer and learning-rate schedule of the paper's recipe.

AdamW (or timm's LAMB) over the DCLS parameter groups -- positions and Sigma at
``position_lr_scale`` times the learning rate and without weight decay -- and a
per-step linear warmup + cosine decay that scales every group by its ``lr_scale``.
"""
from __future__ import annotations

import math
from typing import Dict, List

import torch
from torch import nn

from pipelines.train_config import TrainConfig


def param_groups(model: nn.Module, cfg: TrainConfig) -> List[Dict]:
    """dcls_param_groups (frozen parameters left out) with every group's base ``lr`` = cfg.lr and
    its multiplier in ``lr_scale``: the schedule sets lr = schedule(t) · lr_scale. With
    ``head_lr_scale`` / ``backbone_lr_scale`` other than 1, each group is split into its
    classifier and backbone parameters, scaled by those."""
    from audio_dcls.layers import dcls_param_groups
    from pipelines.model_parts import classifier_layer

    groups = dcls_param_groups(model, lr=cfg.lr, weight_decay=cfg.weight_decay, position_lr_scale=cfg.position_lr_scale)
    if cfg.head_lr_scale != 1.0 or cfg.backbone_lr_scale != 1.0:
        head = {id(p) for p in classifier_layer(model)[1].parameters()}
        split = []
        for g in groups:
            for part, scale in (("backbone", cfg.backbone_lr_scale), ("head", cfg.head_lr_scale)):
                params = [p for p in g["params"] if (id(p) in head) == (part == "head")]
                if params:
                    split.append({**g, "params": params, "lr_scale": g["lr_scale"] * scale, "group": f"{g['group']}/{part}"})
        groups = split
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    betas = tuple(cfg.betas)
    if cfg.opt == "lamb":
        from timm.optim import Lamb

        return Lamb(groups, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)


class WarmupCosine:
    """Per-step schedule: linear warmup from ``warmup_lr`` to ``lr`` over
    ``warmup_steps``, then cosine to ``min_lr`` at ``total_steps``. Each
    parameter group gets schedule(t) × its ``lr_scale``.

    Stateless apart from its settings: the learning rate of update t is a
    function of t, so a resumed run recomputes it exactly.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, lr: float, min_lr: float, warmup_lr: float, warmup_steps: int, total_steps: int):
        self.optimizer = optimizer
        self.lr, self.min_lr, self.warmup_lr = lr, min_lr, warmup_lr
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)

    def lr_at(self, t: int) -> float:
        if t < self.warmup_steps:
            return self.warmup_lr + (self.lr - self.warmup_lr) * t / self.warmup_steps
        decay = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (t - self.warmup_steps) / decay)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))

    def step_update(self, t: int) -> float:
        base = self.lr_at(t)
        for g in self.optimizer.param_groups:
            g["lr"] = base * g.get("lr_scale", 1.0)
        return base

    def state_dict(self) -> Dict:
        return {"lr": self.lr, "min_lr": self.min_lr, "warmup_lr": self.warmup_lr, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}

    def load_state_dict(self, d: Dict) -> None:
        for k in ("lr", "min_lr", "warmup_lr", "warmup_steps", "total_steps"):
            setattr(self, k, d[k])
