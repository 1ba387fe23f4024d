"""``init_from=``: start a run from trained weights (fine-tuning).

:func:`read_parent` recognises our own formats first:

* a release folder (``model.safetensors`` + ``config.yaml`` + ``labels.csv``), and
* a training checkpoint (``last.pt``: its EMA weights when the run kept them).

:func:`load_parent` then copies every backbone tensor (each must exist with the same
shape: the architecture must be the parent's) and the classifier class by class: a row
of the new vocabulary that is a class of the parent's (by MID where both have one, else
by display name) is copied exactly, weight row and bias; a new class keeps its fresh
initialisation (and the ``head_bias_init`` prior). Equal vocabularies keep the whole
classifier. The :class:`InitSummary` says what was kept; the trainer logs it and writes
it to the run folder (``init_from.json``), and the release records the parent's name
and the sha256 of its weights -- the new release holds every weight itself and never
needs the parent's files again.

Anything else (an upstream or ImageNet checkpoint, a URL) goes to the upstream loader,
``audio_dcls.convert.load_init_weights`` (stem and classifier fresh, everything else
loaded), when that package is installed: :func:`initialise` is the one dispatching
entry point.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from audio_dcls.features import LogMelConfig
from audio_dcls.labels import LabelVocabulary
from pipelines.model_parts import classifier_layer

INIT_SUMMARY_FILE = "init_from.json"


class InitFromError(ValueError):
    """Weights that cannot initialise this run (one-line message)."""


@dataclass
class Parent:
    """One of our trained models, read to initialise another."""

    format: str  # 'release' or 'checkpoint'
    path: Path
    name: str  # the release's name (folder), or the run folder's name for a checkpoint
    sha256: str  # of the weights file (model.safetensors, or the whole last.pt)
    arch: str
    model_args: Dict[str, Any]  # as the parent was built (num_classes included)
    frontend: LogMelConfig
    vocabulary: LabelVocabulary
    state: Dict[str, torch.Tensor]  # every state-dict key of the parent model

    def record(self) -> Dict[str, Any]:
        """What a run and its release keep about the parent (never a path they need)."""
        return {"name": self.name, "format": self.format, "path": str(self.path), "sha256": self.sha256, "arch": self.arch, "classes": len(self.vocabulary)}

    def overrides(self) -> List[str]:
        """The config overrides that build this parent's architecture."""
        args = {k: v for k, v in self.model_args.items() if k != "num_classes"}
        return [f"model={self.arch}", f"model_args={json.dumps(args, separators=(',', ':'))}"]

    def needs(self) -> str:
        return " ".join(self.overrides())


def _sha256(path: Path) -> str:
    from pipelines.feature_store import sha256_file

    return sha256_file(path)


def _read_release(folder: Path) -> Parent:
    from audio_dcls.checkpoint import WEIGHTS_FILE, ReleaseError, load_release

    try:
        rel = load_release(folder)
    except ReleaseError as e:
        raise InitFromError(f"init_from: {e}") from None
    vocab = LabelVocabulary([m for m, _ in rel.labels], [n for _, n in rel.labels])
    state = {k: v.detach().clone() for k, v in rel.model.state_dict().items()}
    return Parent("release", folder, rel.name, _sha256(folder / WEIGHTS_FILE), rel.arch, dict(rel.model_args), rel.frontend, vocab, state)


def _read_checkpoint(path: Path) -> Optional[Parent]:
    """Our training checkpoint, or None when the file is not one (another format)."""
    from pipelines.checkpoints import CHECKPOINT_FORMAT, CheckpointError, read_checkpoint

    try:
        head = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a torch file we can read safely: another format
        return None
    if not isinstance(head, dict) or head.get("format") != CHECKPOINT_FORMAT:
        return None
    try:
        ckpt = read_checkpoint(path)
    except CheckpointError as e:
        raise InitFromError(f"init_from: {e}") from None
    labels = [tuple(x) for x in ckpt["labels"]]
    vocab = LabelVocabulary([m for m, _ in labels], [n for _, n in labels])
    state = ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]
    name = path.parent.name or path.stem
    return Parent("checkpoint", path, name, _sha256(path), ckpt["arch"], dict(ckpt["model_args"]), LogMelConfig.from_dict(ckpt["frontend"]), vocab, dict(state))


def read_parent(source: str) -> Optional[Parent]:
    """Our release folder or training checkpoint at ``source``; None for anything else
    (a URL, an upstream file), which only the upstream loader can read."""
    if "://" in source:
        return None
    path = Path(source)
    if path.is_dir():
        return _read_release(path)
    if not path.exists():
        raise InitFromError(f"init_from={source}: no such release folder or checkpoint file")
    if path.suffix.lower() == ".safetensors":
        return None
    return _read_checkpoint(path)


@dataclass
class InitSummary:
    """What ``init_from`` loaded and kept (logged, written to the run folder as JSON)."""

    source: str  # what the config named
    format: str  # 'release', 'checkpoint' or the upstream format's name
    parent: Dict[str, Any]  # name, sha256, ... (Parent.record or the upstream file's)
    lines: List[str] = field(default_factory=list)  # the human summary
    detail: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"source": self.source, "format": self.format, "parent": self.parent, "summary": self.lines, **self.detail}


def _check_backbone(model: nn.Module, parent: Parent, head: str) -> List[str]:
    """Keys of the model's state outside the classifier that the parent provides with the same shape
    (raises, naming the first problems, when any is missing or differs)."""
    target = model.state_dict()
    classifier = (f"{head}.weight", f"{head}.bias")
    missing = [k for k in target if k not in classifier and k not in parent.state]
    shapes = [k for k in target if k not in classifier and k in parent.state and tuple(parent.state[k].shape) != tuple(target[k].shape)]
    extra = [k for k in parent.state if k not in target and k not in classifier]
    if missing or shapes or extra:
        what = []
        if shapes:
            k = shapes[0]
            what.append(f"{len(shapes)} tensors differ in shape (e.g. {k}: {tuple(parent.state[k].shape)} vs {tuple(target[k].shape)})")
        if missing:
            what.append(f"{len(missing)} are missing (e.g. {missing[0]})")
        if extra:
            what.append(f"{len(extra)} are not in this model (e.g. {extra[0]})")
        raise InitFromError(f"init_from: {parent.path} ({parent.arch}) does not fit this model: {'; '.join(what)}. Build the parent's architecture: {parent.needs()}")
    return [k for k in target if k not in classifier]


def load_parent(model: nn.Module, parent: Parent, vocabulary: LabelVocabulary, source: str = "") -> InitSummary:
    """Copy ``parent``'s backbone into ``model`` and its classifier rows by class (see the module docstring)."""
    head, layer = classifier_layer(model)
    keys = _check_backbone(model, parent, head)
    p_weight = parent.state.get(f"{head}.weight")
    if p_weight is None or p_weight.shape[1] != layer.in_features:
        raise InitFromError(f"init_from: {parent.path} ({parent.arch}) does not fit this model: it has no classifier {head} with {layer.in_features} inputs. Build the parent's architecture: {parent.needs()}")
    rows = parent.vocabulary.match(vocabulary)  # row in the parent of each class of the run
    kept: List[Tuple[int, int, str]] = [(j, i, vocabulary.display_name(j)) for j, i in enumerate(rows) if i is not None]
    new = [vocabulary.display_name(j) for j, i in enumerate(rows) if i is None]
    with torch.no_grad():
        state = {k: parent.state[k] for k in keys}
        weight, bias = layer.weight.detach().clone(), None if layer.bias is None else layer.bias.detach().clone()
        p_bias = parent.state.get(f"{head}.bias")
        for j, i, _ in kept:
            weight[j] = p_weight[i]
            if bias is not None and p_bias is not None:
                bias[j] = p_bias[i]
        state[f"{head}.weight"] = weight
        if bias is not None:
            state[f"{head}.bias"] = bias
        model.load_state_dict(state, strict=True)
    whole = parent.vocabulary == vocabulary
    dropped = len(parent.vocabulary) - len(kept)
    lines = [
        f"init from {parent.format} {parent.path} ({parent.arch}, sha256 {parent.sha256[:16]}...): {len(keys)} backbone tensors loaded",
        "classifier kept whole (same vocabulary)" if whole else
        f"classifier: {len(kept)} of {len(vocabulary)} classes copied from the parent's {len(parent.vocabulary)}, {len(new)} new (fresh rows), {dropped} of the parent's not used",
    ]
    if new and not whole:
        lines.append("new classes: " + ", ".join(new[:12]) + (f", ... ({len(new)})" if len(new) > 12 else ""))
    detail = {
        "backbone_tensors": len(keys),
        "classifier": {
            "kept_whole": whole,
            "copied": [{"index": j, "parent_index": i, "name": n, "mid": vocabulary.mid(j)} for j, i, n in kept],
            "new": new,
            "parent_classes_unused": dropped,
        },
    }
    return InitSummary(source or str(parent.path), parent.format, parent.record(), lines, detail)


def _upstream(model: nn.Module, source: str, fresh_dcls: bool = False) -> InitSummary:
    """Hand ``source`` to the upstream checkpoint reader (ImageNet ConvNeXt, MetaFormer, timm files)."""
    try:
        from audio_dcls.convert import load_init_weights
    except ModuleNotFoundError:
        raise InitFromError(
            f"init_from={source}: not one of our release folders or training checkpoints, and this installation "
            "has no reader for other checkpoint formats (audio_dcls.convert)"
        ) from None
    try:
        report = load_init_weights(model, source, fresh_dcls=fresh_dcls)
    except (ValueError, OSError) as e:
        raise InitFromError(f"init_from: {' '.join(str(e).split())}") from None
    record = {"name": Path(report.path).name, "format": report.format, "path": report.path, "sha256": report.sha256}
    return InitSummary(source, report.format, record, list(report.lines()), report.to_dict())


def initialise(model: nn.Module, source: str, vocabulary: LabelVocabulary, parent: Optional[Parent] = None, fresh_dcls: bool = False) -> InitSummary:
    """The one entry point: ``parent`` (from :func:`read_parent`) when ``source`` is ours, else the upstream
    loader (``fresh_dcls``: see ``audio_dcls.convert.load_init_weights``)."""
    if parent is None:
        parent = read_parent(source)
    if parent is not None:
        return load_parent(model, parent, vocabulary, source)
    return _upstream(model, source, fresh_dcls)
