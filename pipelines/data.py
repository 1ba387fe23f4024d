"""Training and evaluation data: stores, or audio decoded on the fly, as datasets.

Every dataset item is ``(clip or None, target (C,), index, skip reason, decode warnings)``, the clip as
the data holds it -- a store's fp16 log-mel (1, F, T) or int16 waveform (L,); audio
decoded on the fly gives int16 waveforms too -- so DataLoader workers only read bytes; the
front end, augmentation and mixup run on the training device
(:class:`pipelines.model_input.ModelInput`). :func:`collate_items` batches items and
sets the skipped ones and the decode warnings aside. :func:`open_data` turns what a user names -- a store
folder, an AudioSet segment CSV (+ audio folder), a ``path,labels`` CSV or PANNs HDF5
packs -- into a :class:`DataSpec`: the dataset with its label vocabulary, front-end
settings, item kind and item ids.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, default_collate

from audio_dcls.features import LogMelConfig
from audio_dcls.labels import LabelVocabulary
from pipelines.feature_store import LOGMEL, WAVEFORM, to_pcm16
from pipelines.long_clips import ClipWindows


class DataError(ValueError):
    """Data that cannot be used as asked (one-line message)."""


class StoreItems(Dataset):
    """A store's clips as items, one clip length each, as stored (no skips: the store holds
    decoded clips). Long clips of a ``--max-seconds`` store become items as ``long_clips``
    says (:mod:`pipelines.long_clips`); :meth:`set_epoch` draws the epoch's random crops."""

    def __init__(self, store, long_clips: str = "first", seed: int = 0, salt: int = 0):
        self.store = store
        lay = store.layout
        self.windows = ClipWindows(store.lengths, lay.window, lay.stride, long_clips, seed, salt)

    def __len__(self) -> int:
        return len(self.windows)

    def set_epoch(self, epoch: int) -> None:
        self.windows.set_epoch(epoch)

    def __getitem__(self, i: int):
        clip, start = self.windows[int(i)]
        # a view on the store's private map: the collate copies it once, into the batch
        x = torch.from_numpy(self.store.read(clip, start, self.windows.window, copy=False))
        if self.store.kind == LOGMEL:
            x = x.unsqueeze(0)  # (1, F, T)
        return x, torch.from_numpy(self.store.target(clip)), int(i), "", ()

    def close(self) -> None:
        self.store.close()

    def positives(self) -> np.ndarray:
        """(C,) items per class (a long clip cut into windows counts once per window)."""
        return self.store.positives(self.windows.items_per_clip if self.windows.mode == "windows" else None)


class AudioItems(Dataset):
    """Clips of a ClipSource decoded when read: int16 waveforms (L,) at the front end's rate,
    padded or cut to the clip length -- the items a waveform store of the same source gives.
    For small sets: every epoch decodes again."""

    def __init__(self, source, frontend: LogMelConfig):
        self.source = source
        self.frontend = frontend
        self.num_samples = int(round(frontend.clip_seconds * frontend.sample_rate))

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        from audio_dcls.audio import AudioDecodeError, pad_or_trim

        clip = self.source[i]
        y = torch.from_numpy(clip.target)
        try:
            x, warnings = clip.decode(self.frontend.sample_rate)
        except AudioDecodeError as e:
            return None, y, int(i), f"undecodable: {e.reason}", ()
        except OSError as e:
            return None, y, int(i), f"unreadable: {e.strerror or e}", ()
        x = pad_or_trim(x, self.num_samples)
        return torch.from_numpy(to_pcm16(x)), y, int(i), "", tuple(warnings)  # int16, as a waveform store holds it

    def close(self) -> None:
        self.source.close()

    def positives(self) -> np.ndarray:
        """(C,) clips per class."""
        counts = np.zeros(len(self.source.vocabulary), dtype=np.int64)
        for clip in self.source.clips:
            counts[list(clip.labels)] += 1
        return counts


def collate_items(batch):
    """-> (x (B, 1, F, T) or (B, L) or None, y (B, C), indices (B,), [(index, reason)] skipped,
    [(index, warning)] of the clips kept with a decode warning).

    In a DataLoader worker the clips are stacked straight into shared memory (as torch's
    default_collate does), the one copy a clip makes on its way to the training process."""
    keep = [b for b in batch if not b[3]]
    skipped = [(b[2], b[3]) for b in batch if b[3]]
    warned = [(b[2], w) for b in keep for w in b[4]]
    if keep:
        x = default_collate([b[0] for b in keep])
        y = torch.stack([b[1] for b in keep])
        idx = torch.tensor([b[2] for b in keep], dtype=torch.long)
    else:
        x, y, idx = None, None, torch.zeros(0, dtype=torch.long)
    return x, y, idx, skipped, warned


@dataclass
class DataSpec:
    dataset: Dataset
    vocabulary: LabelVocabulary
    frontend: LogMelConfig
    ids: List[str]  # item id of each dataset index (a clip id; ``id#k`` for the k-th window of a long clip)
    description: Dict = field(default_factory=dict)
    missing: List[Tuple[str, str]] = field(default_factory=list)  # listed clips without audio (source level)
    unknown_labels: Dict[str, int] = field(default_factory=dict)  # CSV labels outside the vocabulary -> clips (ignored)
    item_kind: str = LOGMEL  # what an item's clip is: 'logmel' (fp16 (1, F, T)) or 'waveform' (int16 (L,))
    notes: List[str] = field(default_factory=list)  # what was done with long clips, for the log

    def _parts(self) -> list:
        return self.dataset.datasets if isinstance(self.dataset, ConcatDataset) else [self.dataset]

    def set_epoch(self, epoch: int) -> None:
        """Before each epoch's DataLoader: the epoch's random crops of long clips."""
        for part in self._parts():
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)

    def close(self) -> None:
        """Release what the dataset holds open (HDF5 handles, memory maps)."""
        for part in self._parts():
            close = getattr(part, "close", None)
            if close is not None:
                close()

    def positives(self) -> np.ndarray:
        """(C,) items per class, over every part."""
        return sum(part.positives() for part in self._parts())

    def label_rate(self) -> np.ndarray:
        """(C,) fraction of the clips that carry each class (the training set's label frequencies)."""
        return self.positives() / max(1, len(self.dataset))

    def populated_classes(self) -> List[int]:
        """Indices of the classes with at least one positive item: what a release records as the classes
        its training data populated (the service shows them)."""
        return [int(i) for i in np.flatnonzero(self.positives())]


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


def _open_store(path: Path, long_clips: str, seed: int, salt: int) -> DataSpec:
    from pipelines.feature_store import FeatureStore, StoreError

    try:
        store = FeatureStore(path)
    except StoreError as e:
        raise DataError(str(e)) from None
    items = StoreItems(store, long_clips, seed, salt)
    lay = store.layout
    notes = []
    if lay.variable:
        per_unit = (1 if lay.kind == WAVEFORM else lay.frontend.hop_length) / lay.frontend.sample_rate
        notes.append(f"{path}: {items.windows.describe(per_unit)}")
    elif long_clips != "first":
        notes.append(f"{path} holds clips cut to {lay.frontend.clip_seconds:g} s (built without --max-seconds): long_clips={long_clips} has nothing to do there")
    description = {"kind": "feature_store", "store_kind": store.kind, "path": str(path), "long_clips": long_clips if lay.variable else "first"}
    return DataSpec(items, store.vocabulary, store.frontend, items.windows.item_ids(store.ids), description, list(store.skipped), item_kind=store.kind, notes=notes)


def open_data(spec: str, audio_dir: Optional[str] = None, frontend: Optional[LogMelConfig] = None, vocabulary: Optional[LabelVocabulary] = None, strict: bool = False, long_clips: str = "first", seed: int = 0, salt: int = 0) -> DataSpec:
    """A store folder, an AudioSet segment CSV (+ ``audio_dir``), a ``path,labels`` CSV
    or PANNs HDF5 file(s) -> a dataset of ``collate_items`` items.

    ``frontend``: settings for audio decoded on the fly (default: the paper's).
    ``vocabulary``: the label set CSV and HDF5 labels are read into (default: the
    source's own -- AudioSet's, or a custom CSV's distinct labels); a store keeps its own.
    ``strict``: a custom CSV label outside ``vocabulary`` is an error instead of being
    counted in ``unknown_labels`` and ignored.
    ``long_clips`` (first, random_crop, windows): how a store that keeps long clips whole
    (``--max-seconds``) is cut into items, random crops drawn from (``seed``, epoch,
    ``salt``, clip); audio decoded on the fly is always cut to its first clip length.
    """
    path = Path(spec)
    if path.is_dir():
        return _open_store(path, long_clips, seed, salt)
    if not path.exists():
        raise DataError(f"{spec}: no such feature store folder or file")
    if long_clips != "first":
        raise DataError(f"{spec}: long_clips={long_clips} reads whole clips from a store; build one with `python -m pipelines.precompute build OUT --max-seconds S ...` (audio decoded on the fly is cut to its first clip length)")
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
        item_kind=WAVEFORM,
    )


def open_training_data(specs: Sequence[str], audio_dir: Optional[str] = None, vocabulary: Optional[LabelVocabulary] = None, frontend: Optional[LogMelConfig] = None, strict: bool = False, long_clips: str = "first", seed: int = 0) -> DataSpec:
    """The training parts joined into one dataset. ``vocabulary`` (else the first part's) and
    the first part's front end (``frontend`` for audio decoded on the fly) and item kind hold
    for all: CSV and HDF5 parts are read into them, stores must already match. ``long_clips``
    and ``seed``: how stores that keep long clips whole are cut into items (part k's random
    crops drawn with salt k)."""
    first = open_data(specs[0], audio_dir, frontend, vocabulary, strict, long_clips, seed, 0)
    parts = [first] + [open_data(p, audio_dir, first.frontend, first.vocabulary, strict, long_clips, seed, salt) for salt, p in enumerate(specs[1:], 1)]
    for p, spec in zip(specs, parts):
        if spec.vocabulary != (vocabulary or first.vocabulary):
            raise DataError(f"train: {p} uses another label vocabulary than {'the run' if vocabulary else specs[0]} ({len(spec.vocabulary)} vs {len(vocabulary or first.vocabulary)} classes)")
        if spec.frontend != first.frontend:
            raise DataError(f"train: {p} was computed with other front-end settings than {specs[0]}")
        if spec.item_kind != first.item_kind:
            raise DataError(f"train: {p} gives {spec.item_kind}s but {specs[0]} gives {first.item_kind}s; use stores of one kind (precompute build --kind)")
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
        item_kind=first.item_kind,
        notes=[n for p in parts for n in p.notes],
    )
