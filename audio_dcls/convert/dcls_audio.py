"""The paper's trained AudioSet models (DCLS-Audio's released checkpoints) as our models.

DCLS-Audio (github.com/K-H-Ismail/DCLS-Audio, the code of arXiv:2309.13972)
publishes four trained taggers on Zenodo (record 8370979). Each file is a
``torch.save`` of ``{"model", "optimizer", "epoch", "scaler", "args"}`` (and
``model_ema`` when EMA was on), ``args`` being an ``argparse.Namespace``; the
state dicts are in the upstream layouts of facebookresearch/ConvNeXt,
sail-sg/metaformer and apple/ml-fastvit, with ``Dcls2d`` layers whose
positions/spreads are one tensor per stage, repeated under every layer's key.

``import_dcls_audio`` reads such a file safely, detects which of our models it
is (or checks the one named), renames every key to ours with timm's
converters, checks that nothing is left over, missing or of another shape and
that the repeated positions are equal, and loads the model. Its front end is
ours (checked by ``check_front_end``), so the result is saved as an ordinary
release folder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import timm
import torch
from torch import nn

from audio_dcls.features import LogMelConfig
from audio_dcls.models import list_audio_models
from audio_dcls.models._audio_cfg import AUDIOSET_LABEL_SET, AUDIOSET_NUM_CLASSES, PAPER_ID

from .checkpoint_file import CheckpointContents, read_checkpoint
from .download import FetchedFile, resolve_source
from .errors import CheckpointError
from .key_match import KeyMatch, match_state, shared_parameter_groups
from .layouts import Layout, MappedTensor, detect_layout, rename_rules, rename_state

__all__ = [
    "DCLS_AUDIO_FRONT_END",
    "RELEASED_CHECKPOINTS",
    "ImportResult",
    "ReleasedCheckpoint",
    "check_front_end",
    "dcls_audio_front_end",
    "import_dcls_audio",
    "released_checkpoint",
    "save_imported_release",
]

ZENODO_FILES = "https://zenodo.org/record/8370979/files/"


@dataclass(frozen=True)
class ReleasedCheckpoint:
    file: str  # file name on Zenodo
    upstream_model: str  # DCLS-Audio's model name (its --model flag)
    arch: str  # our timm model name
    map_mean: float  # eval mAP reported by the paper, mean of 3 seeds (percent)
    map_std: float  # ... and its standard deviation

    @property
    def url(self) -> str:
        return ZENODO_FILES + self.file


RELEASED_CHECKPOINTS: Tuple[ReleasedCheckpoint, ...] = (
    ReleasedCheckpoint("convnext_dcls_audio_tiny.pth", "convnext_dcls_audio_tiny", "convnext_tiny_dcls_audio", 45.52, 0.05),
    ReleasedCheckpoint("convformer_audio_s18.pth", "convformer_audio_s18", "convformer_s18_audio", 43.14, 0.03),
    ReleasedCheckpoint("convformer_dcls_audio_s18.pth", "convformer_dcls_audio_s18", "convformer_s18_dcls_audio", 43.68, 0.02),
    ReleasedCheckpoint("fastvit_dcls_audio_sa24.pth", "fastvit_dcls_audio_sa24", "fastvit_sa24_dcls_audio", 44.40, 0.07),
)

# DCLS-Audio's front end (datasets.py): 32 kHz mono, 10 s padded or truncated;
# torchaudio Spectrogram(n_fft=1024, hop_length=320, power=2) — Hann window of
# n_fft samples, centred frames with reflect padding; MelScale(n_mels=128,
# f_min=50, f_max=14000) — HTK scale, unnormalised triangles; AmplitudeToDB()
# — 10·log10(max(x, 1e-10)), no top_db; then (x + 18.2696) / 30.5735.
DCLS_AUDIO_FRONT_END: Dict[str, Any] = {
    "sample_rate": 32000,
    "clip_seconds": 10.0,
    "n_fft": 1024,
    "win_length": 1024,  # torchaudio's default: n_fft
    "hop_length": 320,
    "window": "hann",
    "center": True,
    "pad_mode": "reflect",
    "power": 2.0,
    "n_mels": 128,
    "f_min": 50.0,
    "f_max": 14000.0,
    "mel_scale": "htk",
    "mel_norm": None,
    "db_amin": 1e-10,
    "db_top_db": None,
    "mean": -18.2696,  # (x - mean) / std = (x + 18.2696) / 30.5735
    "std": 30.5735,
}
# What our LogMel computes beyond the fields of LogMelConfig (audio_dcls/features.py;
# tests/test_features.py checks it against exactly these torchaudio transforms).
_LOGMEL_FIXED = {"window": "hann", "center": True, "pad_mode": "reflect", "power": 2.0, "mel_scale": "htk",
                 "mel_norm": None, "db_amin": 1e-10, "db_top_db": None}


def dcls_audio_front_end() -> LogMelConfig:
    """DCLS-Audio's front-end settings as our ``LogMelConfig``."""
    names = set(LogMelConfig.__dataclass_fields__)
    return LogMelConfig(**{k: v for k, v in DCLS_AUDIO_FRONT_END.items() if k in names})


def check_front_end(config: LogMelConfig) -> None:
    """Raise unless ``config`` (with LogMel's fixed choices) computes DCLS-Audio's input."""
    ours = dict(config.to_dict(), **_LOGMEL_FIXED)
    diff = [f"{k}: DCLS-Audio {v!r}, ours {ours.get(k)!r}" for k, v in DCLS_AUDIO_FRONT_END.items() if ours.get(k) != v]
    if diff:
        raise CheckpointError("front end differs from DCLS-Audio's: " + "; ".join(diff))


def released_checkpoint(file_name: str) -> Optional[ReleasedCheckpoint]:
    return next((r for r in RELEASED_CHECKPOINTS if r.file == file_name), None)


@dataclass
class ImportResult:
    model: nn.Module  # our model with the imported weights, eval mode
    arch: str  # its timm name
    model_args: Dict[str, Any]  # what timm.create_model needs besides the name
    frontend: LogMelConfig  # the input it expects
    source: Dict[str, Any]  # provenance: file, URL, SHA-256, weights entry, epoch, reported mAP
    layout: str  # the upstream layout read
    mapped: List[MappedTensor] = field(default_factory=list)  # every checkpoint tensor and its key in our model
    match: Optional[KeyMatch] = None

    def summary(self) -> List[str]:
        """The import report, one line each."""
        m, src = self.match, self.source
        params = sum(p.numel() for p in self.model.parameters())
        lines = [
            f"imported {src['file']} (sha256 {src['sha256'][:16]}…, weights {src['weights'] or 'bare state dict'}"
            + (f", epoch {src['epoch']}" if src.get("epoch") is not None else "") + ")",
            f"  layout       {self.layout} -> {self.arch} ({'detected from the keys' if src['arch_detected'] else 'as given'})",
            f"  tensors      {len(self.mapped)} checkpoint keys -> {len(m.tensors)} model keys, all mapped, none left over",
        ]
        if m.shared_groups:
            lines.append(f"  shared       {m.shared_groups} DCLS positions/spreads tensors: {m.shared_copies} repeated copies checked equal, stored once")
        lines.append(f"  parameters   {params:,}")
        if src.get("reported_map") is not None:
            lines.append(f"  paper        {src['reported_map']:.2f} ± {src['reported_map_std']:.2f} mAP on AudioSet eval ({PAPER_ID})")
        rules = rename_rules(self.mapped)
        for i, (a, b, n) in enumerate(rules):
            lines.append(f"  {'renamed' if i == 0 else '':<12} {a} -> {b} ({n})")
        return lines


def _candidates(layout: Layout, dcls: bool) -> List[str]:
    """Our registered models of the layout's family, DCLS or not (timm registers them per module)."""
    family = set(timm.list_models(module=layout.model_class.__module__.rpartition(".")[2]))
    return [name for name in list_audio_models(dcls=dcls) if name in family]


def _meta_model(arch: str, num_classes: int) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(arch, num_classes=num_classes)


def _fit(arch: str, layout: Layout, ckpt: CheckpointContents, num_classes: int, what: str) -> Tuple[List[MappedTensor], KeyMatch]:
    model = _meta_model(arch, num_classes)
    target = model.state_dict()
    mapped = rename_state(layout, ckpt.state, target)
    match = match_state(mapped, target, f"{what} -> {arch}", shared=shared_parameter_groups(model))
    return mapped, match


def _misfits(arch: str, layout: Layout, ckpt: CheckpointContents, num_classes: int) -> int:
    """How many keys of the checkpoint and the model do not fit each other."""
    model = _meta_model(arch, num_classes)
    target = model.state_dict()
    match = match_state(rename_state(layout, ckpt.state, target), target, arch, strict=False)
    return len(match.skipped) + len(match.kept)


def _detect_arch(layout: Layout, ckpt: CheckpointContents, num_classes: int, what: str):
    dcls = any(k.endswith(".P") for k in ckpt.state)
    names = _candidates(layout, dcls)
    errors = {}
    for arch in names:
        try:
            return (arch,) + _fit(arch, layout, ckpt, num_classes, what)
        except CheckpointError as e:
            errors[arch] = str(e)
    kind = "DCLS" if dcls else "depthwise-conv"
    if not names:
        raise CheckpointError(f"{what}: no registered {kind} {layout.family} model to load it into")
    nearest = min(names, key=lambda a: _misfits(a, layout, ckpt, num_classes))
    raise CheckpointError(f"{what}: fits none of our {kind} {layout.family} models ({', '.join(names)}); nearest: {errors[nearest]}")


def import_dcls_audio(
    source,
    arch: Optional[str] = None,
    weights: str = "auto",
    cache_dir: Optional[Path] = None,
    show_progress: Optional[bool] = None,
) -> ImportResult:
    """Read a DCLS-Audio checkpoint (file or URL) into one of our models.

    arch: our model name; detected from the keys when None.
    weights: 'auto' ('model', else a bare state dict), 'model' or 'model_ema'.
    """
    check_front_end(dcls_audio_front_end())
    fetched: FetchedFile = resolve_source(source, cache_dir, show_progress)
    if fetched.path.is_dir():
        raise CheckpointError(f"{fetched.path}: is a folder; give the checkpoint file (.pth)")
    what = fetched.path.name
    ckpt = read_checkpoint(fetched.path, weights)
    layout = detect_layout(ckpt.state)
    if layout is None:
        raise CheckpointError(f"{what}: not in a layout DCLS-Audio writes (facebookresearch/ConvNeXt, sail-sg/metaformer, apple/ml-fastvit)")
    if not layout.is_upstream:
        raise CheckpointError(f"{what}: already in timm's layout ({layout.name}), not a DCLS-Audio checkpoint")
    num_classes = layout.num_classes(ckpt.state)
    if num_classes != AUDIOSET_NUM_CLASSES:
        raise CheckpointError(f"{what}: the classifier has {num_classes} outputs; the AudioSet label set has {AUDIOSET_NUM_CLASSES}")
    detected = arch is None
    if detected:
        arch, mapped, match = _detect_arch(layout, ckpt, num_classes, what)
    else:
        known = list_audio_models()
        if arch not in known:
            raise CheckpointError(f"unknown architecture {arch!r}; ours are: {', '.join(known)}")
        if not isinstance(_meta_model(arch, num_classes), layout.model_class):
            raise CheckpointError(f"{what}: a {layout.name} checkpoint cannot load into {arch} (not a {layout.family})")
        mapped, match = _fit(arch, layout, ckpt, num_classes, what)
    model_args = {"num_classes": num_classes}
    model = timm.create_model(arch, pretrained=False, **model_args)
    model.load_state_dict(match.tensors, strict=True)
    model.eval()
    released = released_checkpoint(what)
    source_record = {
        "kind": "dcls-audio-checkpoint",
        "file": what,
        "url": fetched.url,
        "published_at": released.url if released is not None else None,
        "sha256": fetched.sha256,
        "weights": ckpt.weights,
        "epoch": ckpt.epoch,
        "upstream_model": ckpt.args.get("model") or (released.upstream_model if released else None),
        "layout": layout.name,
        "arch_detected": detected,
        "paper": PAPER_ID,
        "reported_map": released.map_mean if released is not None and released.arch == arch else None,
        "reported_map_std": released.map_std if released is not None and released.arch == arch else None,
        "front_end": "DCLS-Audio's (verified equal to ours)",
    }
    return ImportResult(model, arch, model_args, dcls_audio_front_end(), source_record, layout.name, mapped, match)


def save_imported_release(result: ImportResult, folder) -> Path:
    """Write ``result`` as a release folder: weights, AudioSet labels, and config.yaml with the
    provenance as its top-level ``source:`` record (``Release.source``)."""
    from audio_dcls.checkpoint import save_release
    from audio_dcls.labels import audioset_vocabulary

    vocab = audioset_vocabulary()
    params = sum(p.numel() for p in result.model.parameters())
    training = {"parameters": params, "weights": result.source["weights"] or "state_dict"}
    return save_release(
        folder,
        result.model,
        result.arch,
        result.model_args,
        result.frontend,
        list(zip(vocab.mids, vocab.display_names)),
        AUDIOSET_LABEL_SET,
        training=training,
        source=dict(result.source),
    )
