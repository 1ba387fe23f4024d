"""Fitting renamed checkpoint tensors onto a model's state dict.

Every checkpoint tensor either loads (same key, same shape), is skipped with a
reason, or stops the load with a one-line error naming it; every model key
either receives a tensor or is kept at its initialisation with a reason.
Which keys may be skipped or kept is the caller's choice: nothing for an
import (the checkpoint must be the model, exactly), the audio stem and the
classifier for an ImageNet initialisation.

Tensors the model shares between several keys — the DCLS positions and
spreads, one per stage — must arrive equal in every key, since the model
stores them once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .errors import CheckpointError
from .layouts import MappedTensor

__all__ = ["KeyMatch", "match_state", "shared_parameter_groups"]


def shared_parameter_groups(model: nn.Module) -> List[List[str]]:
    """State-dict keys naming one and the same parameter (groups of two or more), in model order."""
    by_tensor: Dict[int, List[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(p), []).append(name)
    return [names for names in by_tensor.values() if len(names) > 1]


@dataclass
class KeyMatch:
    tensors: Dict[str, Tensor] = field(default_factory=dict)  # our key -> tensor to load
    loaded: List[MappedTensor] = field(default_factory=list)  # what loads, in checkpoint order
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (checkpoint key, why it is not loaded)
    kept: List[Tuple[str, str]] = field(default_factory=list)  # (model key, why it keeps its init)
    shared_copies: int = 0  # checkpoint copies of shared tensors found equal (stored once)
    shared_groups: int = 0  # shared tensors (e.g. one P and one Σ per DCLS stage)


def _shape(t) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _hint(source: Tensor, target: Tensor, key: str) -> str:
    if key.endswith(".weight") and target.dim() == 3 and source.dim() == 4:
        return "; the checkpoint has a plain conv where the model has a DCLS layer"
    if key.endswith(".weight") and target.dim() == 4 and source.dim() == 3:
        return "; the checkpoint has a DCLS layer where the model has a plain conv"
    if key.endswith((".P", ".SIG")):
        return "; the DCLS layers differ in tap count or grid size"
    return ""


def _fresh_reason(key: str, fresh: Mapping[str, str]) -> Optional[str]:
    return next((why for prefix, why in fresh.items() if key.startswith(prefix)), None)


def _dcls_layer(key: str, target: Mapping[str, Tensor]) -> Optional[str]:
    """The module name when ``key`` belongs to a DCLS layer of the model."""
    module = key.rpartition(".")[0]
    return module if f"{module}.P" in target else None


def match_state(
    mapped: Sequence[MappedTensor],
    target: Mapping[str, Tensor],
    what: str,
    fresh: Optional[Mapping[str, str]] = None,
    strict: bool = True,
    fresh_dcls: bool = False,
    shared: Sequence[Sequence[str]] = (),
    unshared_positions: str = "error",
) -> KeyMatch:
    """Sort ``mapped`` against the model state dict ``target``.

    what: names checkpoint and model in messages ('FILE -> ARCH').
    fresh: key prefix -> reason, for parts that stay freshly initialised (checkpoint keys under them are skipped).
    strict: any other key that is missing, left over or of another shape is an error; else skipped/kept.
    fresh_dcls: a plain depthwise conv in the checkpoint where the model has a DCLS layer leaves that
        layer at its init (the rest of the checkpoint still has to fit).
    shared: groups of model keys holding one tensor (``shared_parameter_groups``).
    unshared_positions: 'error', or 'last' to take the last copy when a group's copies differ
        (what loading into tied parameters does, e.g. DCLS-Audio's --finetune).
    """
    if unshared_positions not in ("error", "last"):
        raise ValueError(f"unshared_positions must be 'error' or 'last', got {unshared_positions!r}")
    fresh = fresh or {}
    match = KeyMatch()
    fresh_layers = set()
    for m in mapped:
        reason = _fresh_reason(m.key, fresh)
        if reason is not None:
            match.skipped.append((m.source_key, reason))
            continue
        t = target.get(m.key)
        if t is None:
            if strict:
                raise CheckpointError(f"{what}: checkpoint key {m.source_key} (as {m.key}) has no place in the model")
            match.skipped.append((m.source_key, "not in the model"))
            continue
        if tuple(t.shape) != tuple(m.tensor.shape):
            layer = _dcls_layer(m.key, target)
            if fresh_dcls and layer is not None and m.key == f"{layer}.weight" and m.tensor.dim() == 4:
                fresh_layers.add(layer)
                match.skipped.append((m.source_key, "plain depthwise conv where the model has DCLS (layer kept fresh)"))
                continue
            if strict:
                raise CheckpointError(
                    f"{what}: {m.source_key} (as {m.key}) has shape {_shape(m.tensor)} but the model needs {_shape(t)}"
                    + _hint(m.tensor, t, m.key)
                )
            match.skipped.append((m.source_key, f"shape {_shape(m.tensor)}, model needs {_shape(t)}"))
            continue
        match.tensors[m.key] = m.tensor
        match.loaded.append(m)
    missing = [k for k in target if k not in match.tensors]
    for key in missing:
        reason = _fresh_reason(key, fresh)
        layer = _dcls_layer(key, target)
        if reason is None and layer in fresh_layers:
            reason = "DCLS layer kept fresh (the checkpoint has a plain conv here)"
        if reason is None:
            if strict:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise CheckpointError(f"{what}: the model needs {key}, which the checkpoint lacks{more}")
            reason = "not in the checkpoint"
        match.kept.append((key, reason))
    _check_shared(match, shared, what, unshared_positions)
    return match


def _check_shared(match: KeyMatch, shared: Sequence[Sequence[str]], what: str, policy: str) -> None:
    for group in shared:
        present = [k for k in group if k in match.tensors]
        if len(present) < 2:
            continue
        first = match.tensors[present[0]]
        differing = [k for k in present[1:] if not torch.equal(match.tensors[k], first)]
        if differing:
            if policy == "error":
                raise CheckpointError(
                    f"{what}: {present[0]} and {differing[0]} differ, but the model holds them as one tensor "
                    f"(positions/spreads shared per stage); unshared_positions='last' takes the last copy"
                )
            last = match.tensors[present[-1]]
            for k in present:
                match.tensors[k] = last
        match.shared_groups += 1
        match.shared_copies += len(present) - 1
