"""Release folders: what training writes and the service loads.

A release folder holds exactly three files, none of them pickled:

    model.safetensors   the weights (shared DCLS positions stored once)
    config.yaml         architecture name and arguments, front-end settings,
                        label vocabulary source, training summary and metrics
    labels.csv          index,mid,display_name — row i is output i

Folders are written to a temporary sibling and renamed into place, so a
reader never sees half a release.
"""
from __future__ import annotations

import csv
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
import yaml
from safetensors.torch import load_model, save_model
from torch import nn

from .features import LogMelConfig

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
    model: nn.Module  # built with timm.create_model and loaded, in eval mode
    arch: str  # timm model name
    model_args: Dict  # keyword arguments given to timm.create_model
    frontend: LogMelConfig  # settings of the log-mel front end the model was trained with
    labels: List[Tuple[str, str]]  # (mid, display name) per output index
    label_source: str  # where the vocabulary came from (e.g. 'audioset-527')
    training: Dict = field(default_factory=dict)  # summary written by the trainer (epochs, mAP, ...)
    path: Optional[Path] = None

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def write_labels_csv(path: Union[str, Path], labels: Sequence[Tuple[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "mid", "display_name"])
        for i, (mid, name) in enumerate(labels):
            writer.writerow([i, mid, name])


def read_labels_csv(path: Union[str, Path]) -> List[Tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or set(rows[0]) != {"index", "mid", "display_name"}:
        raise ReleaseError(f"{path}: expected a CSV with columns index,mid,display_name")
    labels = []
    for expected, row in enumerate(rows):
        if int(row["index"]) != expected:
            raise ReleaseError(f"{path}: row {expected + 1} has index {row['index']}, expected {expected}")
        labels.append((row["mid"], row["display_name"]))
    return labels


def save_release(
    folder: Union[str, Path],
    model: nn.Module,
    arch: str,
    model_args: Dict,
    frontend: LogMelConfig,
    labels: Sequence[Tuple[str, str]],
    label_source: str,
    training: Optional[Dict] = None,
) -> Path:
    """Write a release folder atomically; replaces an existing one."""
    folder = Path(folder)
    if not RELEASE_NAME.match(folder.name):
        raise ReleaseError(f"release folder name {folder.name!r} must match {RELEASE_NAME.pattern}")
    num_classes = model_args.get("num_classes")
    if num_classes is not None and num_classes != len(labels):
        raise ReleaseError(f"model has {num_classes} outputs but {len(labels)} labels were given")
    config = {
        "format": RELEASE_FORMAT,
        "arch": arch,
        "model_args": dict(model_args),
        "num_classes": len(labels),
        "frontend": frontend.to_dict(),
        "labels": {"source": label_source, "file": LABELS_FILE, "count": len(labels)},
        "training": dict(training or {}),
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        state_model = model.module if hasattr(model, "module") else model
        save_model(state_model, str(tmp / WEIGHTS_FILE), metadata={"arch": arch, "format": str(RELEASE_FORMAT)})
        with open(tmp / CONFIG_FILE, "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        write_labels_csv(tmp / LABELS_FILE, labels)
        # mkdtemp makes a private folder; a release is read by other users
        # (the service container runs unprivileged).
        tmp.chmod(0o755)
        for name in (WEIGHTS_FILE, CONFIG_FILE, LABELS_FILE):
            (tmp / name).chmod(0o644)
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


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


def load_release(folder: Union[str, Path], device: Union[str, torch.device] = "cpu") -> Release:
    """Build the model named in ``config.yaml`` and load its safetensors weights."""
    import audio_dcls.models  # noqa: F401  (registers our architectures with timm)

    folder = Path(folder)
    config = read_release_config(folder)
    labels = read_labels_csv(folder / LABELS_FILE)
    if len(labels) != config.get("num_classes"):
        raise ReleaseError(f"{folder}: {len(labels)} labels but config says {config.get('num_classes')} classes")
    model_args = dict(config.get("model_args") or {})
    model_args["num_classes"] = len(labels)
    try:
        model = timm.create_model(config["arch"], pretrained=False, **model_args)
    except Exception as e:  # unknown architecture or bad arguments
        raise ReleaseError(f"{folder}: cannot build {config['arch']!r}: {e}") from None
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
        path=folder,
    )
