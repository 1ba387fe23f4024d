"""Reading other projects' checkpoint files without running their code.

A ``.pth`` file is a pickle, and unpickling an untrusted pickle can run any
code. Files are therefore read with ``torch.load(weights_only=True)``: only
tensors, containers and numbers come back, plus ``argparse.Namespace`` — the
one class DCLS-Audio (like the ConvNeXt and DeiT training scripts it derives
from) pickles next to the weights, holding its command-line flags. Nothing
else is ever allow-listed; a file that needs anything else is refused with a
one-line message naming what it asked for. ``.safetensors`` files need no
unpickling at all.

A checkpoint holds its weights under ``model`` (DCLS-Audio, facebookresearch
ConvNeXt), ``model_ema``, ``state_dict`` (timm training checkpoints), or is a
bare state dict (timm and sail-sg releases); a ``module.`` prefix left by
DistributedDataParallel is removed.
"""
from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from .errors import CheckpointError

__all__ = ["ALLOWED_CLASSES", "WEIGHT_ENTRIES", "CheckpointContents", "load_checkpoint_object", "read_checkpoint"]

# The only non-builtin classes a checkpoint may contain (DCLS-Audio's training flags).
ALLOWED_CLASSES = (argparse.Namespace,)
# Where the weights sit in a checkpoint dict, in the order 'auto' looks for them.
WEIGHT_ENTRIES = ("model", "state_dict", "model_ema")
_DDP_PREFIX = "module."
_SAFETENSORS_SUFFIX = ".safetensors"


@dataclass
class CheckpointContents:
    path: Path  # the file read
    state: Dict[str, Tensor]  # the chosen weights, DDP prefix removed, in file order
    weights: str  # entry they came from ('model', 'model_ema', 'state_dict'), '' for a bare state dict
    entries: Tuple[str, ...] = ()  # top-level keys of the checkpoint dict ('' entries when bare)
    epoch: Optional[Any] = None  # the 'epoch' entry, when saved (DCLS-Audio writes an int or 'best')
    args: Dict[str, Any] = field(default_factory=dict)  # the training flags (argparse.Namespace), when saved


def _refusal(path: Path, err: Exception) -> CheckpointError:
    text = str(err)
    asked = re.search(r"GLOBAL ([\w.]+)", text)
    if asked:
        return CheckpointError(
            f"{path}: refused to unpickle: the file asks for {asked.group(1)}, and only tensors, containers "
            f"and argparse.Namespace are allowed (a checkpoint that needs more could run code on load)"
        )
    # torch wraps the unpickler's own complaint in a long explanation; keep the complaint.
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", text, re.S)
    reason = " ".join((detail.group(1) if detail else text or type(err).__name__).split())
    return CheckpointError(f"{path}: not a readable PyTorch checkpoint (the safe unpickler stopped: {reason[:160]})")


def load_checkpoint_object(path) -> Any:
    """The object stored in ``path`` (.pth/.pt via safe unpickling, or .safetensors)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == _SAFETENSORS_SUFFIX:
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # corrupt or truncated file
            raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {str(e)[:120]})") from None
    # Zip-format checkpoints (every torch.save since 1.6) are memory-mapped: the
    # optimizer state that DCLS-Audio files carry is then never read into memory.
    mmap = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(list(ALLOWED_CLASSES)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise _refusal(path, e) from None
    except Exception as e:  # not a checkpoint at all, truncated, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first[:160]})") from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def _namespace_dict(args: Any) -> Dict[str, Any]:
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if not isinstance(args, dict):
        return {}
    plain = (str, int, float, bool, type(None))
    out = {}
    for k, v in args.items():
        if isinstance(v, plain) or (isinstance(v, (list, tuple)) and all(isinstance(x, plain) for x in v)):
            out[str(k)] = list(v) if isinstance(v, tuple) else v
    return out


def _strip_ddp_prefix(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    if state and all(k.startswith(_DDP_PREFIX) for k in state):
        return {k[len(_DDP_PREFIX):]: v for k, v in state.items()}
    return state


def read_checkpoint(path, weights: str = "auto") -> CheckpointContents:
    """Read ``path`` and pick its weights.

    ``weights``: 'auto' (the first of model, state_dict, model_ema present, or a
    bare state dict), or one entry by name ('model', 'model_ema', ...).
    """
    path = Path(path)
    obj = load_checkpoint_object(path)
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict or a checkpoint dict")
    if _is_state_dict(obj):
        if weights not in ("auto", ""):
            raise CheckpointError(f"{path}: a bare state dict has no {weights!r} entry (use --weights auto)")
        return CheckpointContents(path, _strip_ddp_prefix(dict(obj)), "", ())
    entries = tuple(str(k) for k in obj)
    if weights == "auto":
        chosen = next((k for k in WEIGHT_ENTRIES if k in obj), None)
        if chosen is None:
            raise CheckpointError(f"{path}: no weights found (entries: {', '.join(entries)}; expected one of {', '.join(WEIGHT_ENTRIES)})")
    else:
        chosen = weights
        if chosen not in obj:
            raise CheckpointError(f"{path}: no {chosen!r} entry (the file holds: {', '.join(entries)})")
    state = obj[chosen]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: entry {chosen!r} is a {type(state).__name__}, not a state dict")
    for k, v in state.items():
        if not isinstance(v, Tensor):
            raise CheckpointError(f"{path}: entry {chosen!r} key {k!r} is a {type(v).__name__}, not a tensor")
    if not state:
        raise CheckpointError(f"{path}: entry {chosen!r} is empty")
    epoch = obj.get("epoch")
    return CheckpointContents(
        path,
        _strip_ddp_prefix(dict(state)),
        chosen,
        entries,
        epoch=epoch if isinstance(epoch, (int, str)) else None,
        args=_namespace_dict(obj.get("args")),
    )
