"""Release folders: what training writes and the service loads.

A release folder holds exactly three files, none of them pickled:

    model.safetensors   the weights (shared DCLS positions stored once)
    config.yaml         architecture name and arguments, front-end settings,
                        label vocabulary source, training summary and metrics,
                        and, for weights made elsewhere, their ``source:`` record
    labels.csv          index,mid,display_name — row i is output i

Folders are written to a temporary sibling, every file and the folder fsynced,
and renamed into place, so a reader never sees half a release, even after a crash.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import yaml
from safetensors.torch import load_model, save_model
from torch import nn

from audio_dcls.features import LogMelConfig
from audio_dcls.io import atomic_path, atomic_write, fsync_dir
from audio_dcls.labels import LabelVocabulary
from audio_dcls.model_factory import build_model

RELEASE_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
LABELS_FILE = "labels.csv"
# Model names end up in URLs and paths: letters, digits, '.', '_' and '-'.
RELEASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ReleaseError(ValueError):
    """A release folder is missing, incomplete or inconsistent."""


@dataclass
class Release:
    name: str  # folder name; the service's model name
    model: nn.Module  # built with audio_dcls.model_factory.build_model and loaded, in eval mode
    arch: str  # timm model name
    model_args: Dict  # keyword arguments given to timm.create_model
    frontend: LogMelConfig  # settings of the log-mel front end the model was trained with
    labels: List[Tuple[str, str]]  # (mid, display name) per output index
    label_source: str  # where the vocabulary came from (e.g. 'audioset-527')
    training: Dict = field(default_factory=dict)  # summary written by the trainer (epochs, mAP, ...)
    source: Dict = field(default_factory=dict)  # where weights made elsewhere come from (file, URL, SHA-256, ...); {} if trained here
    path: Optional[Path] = None

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def save_release(
    folder: Union[str, Path],
    model: nn.Module,
    arch: str,
    model_args: Dict,
    frontend: LogMelConfig,
    labels: Sequence[Tuple[str, str]],
    label_source: str,
    training: Optional[Dict] = None,
    source: Optional[Dict] = None,
) -> Path:
    """Write a release folder atomically; replaces an existing one.

    ``source``: provenance of weights not trained here (``pipelines.import_checkpoint``
    records the file, URL, SHA-256 and the paper's mAP), written as a top-level
    ``source:`` mapping of config.yaml.
    """
    folder = Path(folder)
    if not RELEASE_NAME.match(folder.name):
        raise ReleaseError(f"release folder name {folder.name!r} must match {RELEASE_NAME.pattern}")
    num_classes = model_args.get("num_classes")
    if num_classes is not None and num_classes != len(labels):
        raise ReleaseError(f"model has {num_classes} outputs but {len(labels)} labels were given")
    try:
        vocab = LabelVocabulary([m for m, _ in labels], [n for _, n in labels])
    except ValueError as e:
        raise ReleaseError(f"labels: {e}") from None
    config = {
        "format": RELEASE_FORMAT,
        "arch": arch,
        "model_args": dict(model_args),
        "num_classes": len(labels),
        "frontend": frontend.to_dict(),
        "labels": {"source": label_source, "file": LABELS_FILE, "count": len(labels)},
        "training": dict(training or {}),
    }
    if source is not None:
        config["source"] = dict(source)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _write_release_files(tmp, model, arch, config, vocab)
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(tmp, folder)
        fsync_dir(folder.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _write_release_files(tmp: Path, model: nn.Module, arch: str, config: Dict, vocab: LabelVocabulary) -> None:
    """The three files, each durable, into the (private) temporary folder ``tmp``."""
    state_model = model.module if hasattr(model, "module") else model
    with atomic_path(tmp / WEIGHTS_FILE) as weights:
        save_model(state_model, str(weights), metadata={"arch": arch, "format": str(RELEASE_FORMAT)})
    atomic_write(tmp / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
    vocab.to_csv(tmp / LABELS_FILE)
    # mkdtemp makes a private folder; a release is read by other users
    # (the service container runs unprivileged).
    tmp.chmod(0o755)
    for name in (WEIGHTS_FILE, CONFIG_FILE, LABELS_FILE):
        (tmp / name).chmod(0o644)
    fsync_dir(tmp)


def read_labels(path: Path) -> List[Tuple[str, str]]:
    """labels.csv of a release -> [(mid, display name)] per output (LabelVocabulary's codec)."""
    try:
        vocab = LabelVocabulary.from_csv(path)
    except (ValueError, OSError) as e:
        raise ReleaseError(f"{path}: {' '.join(str(e).split())}") from None
    return list(zip(vocab.mids, vocab.display_names))


def read_release_config(folder: Union[str, Path]) -> Dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise ReleaseError(f"{folder}: not a release folder (missing)")
    missing = [n for n in (WEIGHTS_FILE, CONFIG_FILE, LABELS_FILE) if not (folder / n).is_file()]
    if missing:
        raise ReleaseError(f"{folder}: incomplete release, missing {', '.join(missing)}")
    try:
        config = yaml.safe_load((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ReleaseError(f"{folder / CONFIG_FILE}: not valid YAML ({e.__class__.__name__})") from None
    if not isinstance(config, dict) or config.get("format") != RELEASE_FORMAT or "arch" not in config:
        raise ReleaseError(f"{folder / CONFIG_FILE}: not a format-{RELEASE_FORMAT} release config")
    return config


def _source_record(folder: Path, config: Dict) -> Dict:
    source = config.get("source")
    if source is None:
        return {}
    if not isinstance(source, dict):
        raise ReleaseError(f"{folder / CONFIG_FILE}: 'source' must be a mapping, got {type(source).__name__}")
    return source


def load_release(folder: Union[str, Path], device: Union[str, torch.device] = "cpu") -> Release:
    """Build the model named in ``config.yaml`` and load its safetensors weights."""
    folder = Path(folder)
    config = read_release_config(folder)
    labels = read_labels(folder / LABELS_FILE)
    if len(labels) != config.get("num_classes"):
        raise ReleaseError(f"{folder}: {len(labels)} labels but config says {config.get('num_classes')} classes")
    model_args = dict(config.get("model_args") or {})
    model_args["num_classes"] = len(labels)
    try:
        model = build_model(config["arch"], model_args, len(labels))
    except Exception as e:  # unknown architecture or bad arguments
        # e.g. a FileNotFoundError whose str() is empty: a model_args.checkpoint_path that moved
        raise ReleaseError(f"{folder}: cannot build {config['arch']!r}: {' '.join(str(e).split()) or type(e).__name__}") from None
    try:
        missing, unexpected = load_model(model, str(folder / WEIGHTS_FILE), strict=False, device=str(device))
    except Exception as e:
        raise ReleaseError(f"{folder / WEIGHTS_FILE}: unreadable weights ({e})") from None
    if missing or unexpected:
        raise ReleaseError(f"{folder / WEIGHTS_FILE}: weights do not fit {config['arch']} (missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    model.to(device).eval()
    return Release(
        name=folder.name,
        model=model,
        arch=config["arch"],
        model_args=model_args,
        frontend=LogMelConfig.from_dict(config["frontend"]),
        labels=labels,
        label_source=config["labels"]["source"],
        training=config.get("training") or {},
        source=_source_record(folder, config),
        path=folder,
    )
