"""Training and evaluation data: feature stores, or audio decoded on the fly, as datasets.

Every dataset item is ``(log-mel (1, F, T) or None, target (C,), index, skip reason)``;
:func:`collate_items` batches them and sets the skipped ones aside. :func:`open_data`
turns what a user names -- a feature store folder, an AudioSet segment CSV (+ audio
folder), a ``path,labels`` CSV or PANNs HDF5 packs -- into a :class:`DataSpec`: the
dataset with its label vocabulary, front-end settings and clip ids.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from audio_dcls.features import LogMelConfig
from audio_dcls.labels import LabelVocabulary


class DataError(ValueError):
    """Data that cannot be used as asked (one-line message)."""


class StoreItems(Dataset):
    """A FeatureStore with item indices (and no skips: the store holds decoded clips)."""

    def __init__(self, store):
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int):
        x, y = self.store[i]
        return x, y, int(i), ""

    def close(self) -> None:
        self.store.close()

    def positives(self) -> np.ndarray:
        """(C,) clips per class."""
        return self.store.positives()


class AudioItems(Dataset):
    """Clips of a ClipSource decoded and turned into log-mels when read.

    For small sets only: every epoch pays the decoding and the STFT again.
    The front end is built lazily in each DataLoader worker.
    """

    def __init__(self, source, frontend: LogMelConfig):
        self.source = source
        self.frontend = frontend
        self.num_samples = int(round(frontend.clip_seconds * frontend.sample_rate))
        self._logmel = None

    def __len__(self) -> int:
        return len(self.source)

    def __getstate__(self):
        d = self.__dict__.copy()
        d["_logmel"] = None
        return d

    def __getitem__(self, i: int):
        from audio_dcls.audio import AudioDecodeError, pad_or_trim
        from audio_dcls.features import LogMel

        clip = self.source[i]
        y = torch.from_numpy(clip.target)
        try:
            x = pad_or_trim(clip.load(self.frontend.sample_rate), self.num_samples)
        except AudioDecodeError as e:
            return None, y, int(i), f"undecodable: {e.reason}"
        except OSError as e:
            return None, y, int(i), f"unreadable: {e.strerror or e}"
        if self._logmel is None:
            self._logmel = LogMel(self.frontend).eval()
        with torch.inference_mode():
            m = self._logmel(torch.from_numpy(x).unsqueeze(0))[0]  # (1, F, T)
        return m.clone(), y, int(i), ""

    def close(self) -> None:
        self.source.close()

    def positives(self) -> np.ndarray:
        """(C,) clips per class."""
        counts = np.zeros(len(self.source.vocabulary), dtype=np.int64)
        for clip in self.source.clips:
            counts[list(clip.labels)] += 1
        return counts


def collate_items(batch):
    """-> (x (B, 1, F, T) or None, y (B, C), indices (B,), [(index, reason)] skipped)."""
    keep = [b for b in batch if not b[3]]
    skipped = [(b[2], b[3]) for b in batch if b[3]]
    if keep:
        x = torch.stack([b[0] for b in keep])
        y = torch.stack([b[1] for b in keep])
        idx = torch.tensor([b[2] for b in keep], dtype=torch.long)
    else:
        x, y, idx = None, None, torch.zeros(0, dtype=torch.long)
    return x, y, idx, skipped


@dataclass
class DataSpec:
    dataset: Dataset
    vocabulary: LabelVocabulary
    frontend: LogMelConfig
    ids: List[str]  # clip id of each dataset index
    description: Dict = field(default_factory=dict)
    missing: List[Tuple[str, str]] = field(default_factory=list)  # listed clips without audio (source level)
    unknown_labels: Dict[str, int] = field(default_factory=dict)  # CSV labels outside the vocabulary -> clips (ignored)

    def _parts(self) -> list:
        return self.dataset.datasets if isinstance(self.dataset, ConcatDataset) else [self.dataset]

    def close(self) -> None:
        """Release what the dataset holds open (HDF5 handles, memory maps)."""
        for part in self._parts():
            close = getattr(part, "close", None)
            if close is not None:
                close()

    def label_rate(self) -> np.ndarray:
        """(C,) fraction of the clips that carry each class (the training set's label frequencies)."""
        counts = sum(part.positives() for part in self._parts())
        return counts / max(1, len(self.dataset))


def _is_audioset_csv(path: Path) -> bool:
    with open(path, encoding="utf-8-sig") as f:
        for line in f:
            if line.strip():
                return line.lstrip().startswith("#")
    return False


def is_custom_csv(spec: str) -> bool:
    """A ``path,labels`` CSV (not an AudioSet segment CSV, a store or an HDF5 pack)."""
    path = Path(spec)
    return path.suffix.lower() == ".csv" and path.is_file() and not _is_audioset_csv(path)


def open_clip_source(path: Path, audio_dir: Optional[str] = None, vocabulary: Optional[LabelVocabulary] = None, strict: bool = False):
    """An AudioSet segment CSV (+ ``audio_dir``), a ``path,labels`` CSV or a PANNs HDF5 file -> its ClipSource
    (``strict``: a custom CSV label outside ``vocabulary`` is an error)."""
    from pipelines.sources import AudioSetSource, CustomCsvSource, PannsHdf5Source

    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return PannsHdf5Source(path, vocabulary=vocabulary)
    if suffix != ".csv":
        raise DataError(f"{path}: expected a feature store folder, a .csv or an .h5 file")
    if _is_audioset_csv(path):
        if not audio_dir:
            raise DataError(f"{path} is an AudioSet segment CSV: give the audio folder too (--audio-dir / audio_dir=)")
        return AudioSetSource(path, audio_dir=audio_dir, vocabulary=vocabulary)
    return CustomCsvSource(path, audio_dir=audio_dir or None, vocabulary=vocabulary, strict=strict)


def open_data(spec: str, audio_dir: Optional[str] = None, frontend: Optional[LogMelConfig] = None, vocabulary: Optional[LabelVocabulary] = None, strict: bool = False) -> DataSpec:
    """A feature store folder, an AudioSet segment CSV (+ ``audio_dir``), a
    ``path,labels`` CSV or PANNs HDF5 file(s) -> a dataset of ``collate_items`` items.

    ``frontend``: settings for audio decoded on the fly (default: the paper's).
    ``vocabulary``: the label set CSV and HDF5 labels are read into (default: the
    source's own -- AudioSet's, or a custom CSV's distinct labels); a store keeps its own.
    ``strict``: a custom CSV label outside ``vocabulary`` is an error instead of being
    counted in ``unknown_labels`` and ignored.
    """
    from pipelines.feature_store import FeatureStore, StoreError

    path = Path(spec)
    if path.is_dir():
        try:
            store = FeatureStore(path)
        except StoreError as e:
            raise DataError(str(e)) from None
        return DataSpec(StoreItems(store), store.vocabulary, store.frontend, list(store.ids), {"kind": "feature_store", "path": str(path)}, list(store.skipped))
    if not path.exists():
        raise DataError(f"{spec}: no such feature store folder or file")
    frontend = frontend or LogMelConfig()
    try:
        source = open_clip_source(path, audio_dir, vocabulary, strict)
    except DataError:
        raise
    except (ValueError, OSError, KeyError) as e:
        raise DataError(f"{spec}: {' '.join(str(e).split())}") from None
    if len(source) == 0:
        source.close()
        raise DataError(f"{spec}: no clip with audio ({len(source.missing)} listed clips are missing)")
    return DataSpec(
        AudioItems(source, frontend),
        source.vocabulary,
        frontend,
        [c.id for c in source.clips],
        {"kind": source.kind, **source.describe()},
        [tuple(m) for m in source.missing],
        dict(getattr(source, "unknown_labels", {})),
    )


def open_training_data(specs: Sequence[str], audio_dir: Optional[str] = None, vocabulary: Optional[LabelVocabulary] = None, frontend: Optional[LogMelConfig] = None, strict: bool = False) -> DataSpec:
    """The training parts joined into one dataset. ``vocabulary`` (else the first part's) and
    the first part's front end (``frontend`` for audio decoded on the fly) hold for all: CSV
    and HDF5 parts are read into them, stores must already match."""
    first = open_data(specs[0], audio_dir, frontend, vocabulary, strict)
    parts = [first] + [open_data(p, audio_dir, first.frontend, first.vocabulary, strict) for p in specs[1:]]
    for p, spec in zip(specs, parts):
        if spec.vocabulary != (vocabulary or first.vocabulary):
            raise DataError(f"train: {p} uses another label vocabulary than {'the run' if vocabulary else specs[0]} ({len(spec.vocabulary)} vs {len(vocabulary or first.vocabulary)} classes)")
        if spec.frontend != first.frontend:
            raise DataError(f"train: {p} was computed with other front-end settings than {specs[0]}")
    if len(parts) == 1:
        return first
    return DataSpec(
        ConcatDataset([p.dataset for p in parts]),
        first.vocabulary,
        first.frontend,
        [i for p in parts for i in p.ids],
        {"kind": "concat", "parts": [p.description for p in parts]},
        [m for p in parts for m in p.missing],
        {k: v for p in parts for k, v in p.unknown_labels.items()},
    )
