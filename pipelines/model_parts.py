"""The parts of an audio model that fine-tuning treats differently: the classifier, the
stem and stages, and freezing them (``freeze=none|backbone|stages:N``).

The classifier is the last ``nn.Linear`` whose outputs are the classes (ConvNeXt's and
FastViT's ``head.fc``, ConvFormer's ``head.fc2``): its rows are classes, so it is what
``init_from`` copies row by row, ``head_bias_init`` sets and ``head_lr_scale`` scales.
Everything else is the backbone.

A frozen parameter has ``requires_grad=False`` (so it is in no optimizer group and gets
no weight decay), and every module whose parameters are all frozen runs in eval mode
during training (no dropout or drop path, BatchNorm statistics fixed): the frozen
weights come out of training bit-identical.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

from torch import nn


class ModelPartsError(ValueError):
    """A model without the part a setting needs (one-line message)."""


def classifier_layer(model: nn.Module) -> Tuple[str, nn.Linear]:
    """(state-dict prefix without the dot, layer) of the classifier: the last Linear with
    ``model.num_classes`` outputs."""
    num_classes = getattr(model, "num_classes", None)
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes:
            found = (name, module)
    if found is None:
        raise ModelPartsError(f"{type(model).__name__}: no Linear classifier with {num_classes} outputs")
    return found


@dataclass
class FrozenParts:
    mode: str  # the freeze setting
    modules: List[nn.Module] = field(default_factory=list)  # the largest submodules with every parameter frozen
    names: List[str] = field(default_factory=list)  # their names
    parameters: int = 0  # values frozen

    def set_eval(self) -> None:
        """Frozen parts in eval mode (call after ``model.train()``)."""
        for m in self.modules:
            m.eval()

    def describe(self) -> str:
        if not self.modules:
            return "nothing frozen"
        shown = ", ".join(self.names[:6]) + (f", ... ({len(self.names)} modules)" if len(self.names) > 6 else "")
        return f"freeze={self.mode}: {self.parameters:,} parameters fixed, in eval mode ({shown})"


def _frozen_prefixes(model: nn.Module, mode: str) -> List[str]:
    if mode == "backbone":
        head, _ = classifier_layer(model)
        return [n for n, _ in model.named_parameters() if not n.startswith(head + ".")]
    n = int(mode.split(":", 1)[1])
    stages = getattr(model, "stages", None)
    if getattr(model, "stem", None) is None or stages is None:
        raise ModelPartsError(f"freeze={mode}: {type(model).__name__} has no stem and stages")
    if n > len(stages):
        raise ModelPartsError(f"freeze={mode}: {type(model).__name__} has {len(stages)} stages")
    prefixes = ["stem."] + [f"stages.{i}." for i in range(n)]
    return [name for name, _ in model.named_parameters() if name.startswith(tuple(prefixes))]


def _fully_frozen(module: nn.Module) -> bool:
    params = list(module.parameters())
    return bool(params) and not any(p.requires_grad for p in params)


def _collect(module: nn.Module, prefix: str, out: FrozenParts) -> None:
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if _fully_frozen(child):
            out.modules.append(child)
            out.names.append(full)
        else:
            _collect(child, full + ".", out)


def freeze_parts(model: nn.Module, mode: str) -> FrozenParts:
    """Freeze what ``mode`` names ('none', 'backbone', 'stages:N') in place; returns the parts."""
    parts = FrozenParts(mode)
    if mode == "none":
        return parts
    names = set(_frozen_prefixes(model, mode))
    seen = set()
    for name, p in model.named_parameters():
        if name in names:
            p.requires_grad_(False)
            if id(p) not in seen:
                seen.add(id(p))
                parts.parameters += p.numel()
    _collect(model, "", parts)
    return parts
