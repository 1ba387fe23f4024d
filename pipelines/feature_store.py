"""The offline feature store: fp16 log-mels + labels, sharded, checksummed, resumable.

Layout of a store folder::

    plan.json                 what is being built: front end, vocabulary, source, the
                              ordered clip list's fingerprint, shard size, part i/N
    shards/00000.features.npy float16 (n, n_mels, T) log-mels (memory-mapped on read)
    shards/00000.targets.npy  uint8 (n, C) multi-hot labels
    shards/00000.json         the shard's commit record: ids, skipped clips and why,
                              sha256 and size of both .npy files (written last)
    ids.txt                   all clip ids in store order, one per line
    labels.csv                the vocabulary (index,mid,display_name)
    skipped.csv               id,reason for every clip left out
    manifest.json             written last by finalize: the store is complete

Each file is written through ``audio_dcls.io`` (a temporary name, fsynced, renamed,
the folder fsynced) and a shard's JSON record goes last, so a shard either exists
completely or not at all; a rerun after a crash (or SIGKILL) keeps the finished
shards and redoes the rest. Why .npy shards: README, "Sources and the feature store".
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from audio_dcls.features import LogMelConfig
from audio_dcls.io import atomic_open, atomic_path, atomic_write, atomic_write_json, fsync_dir, remove_stale_temp_files
from audio_dcls.labels import LabelVocabulary

log = logging.getLogger(__name__)

FORMAT = "audio_dcls.feature_store"
FORMAT_VERSION = 1
SHARD_DIR = "shards"


class StoreError(RuntimeError):
    """A feature store that is missing, unfinished, inconsistent or from other inputs."""


# ----------------------------------------------------------------------------------
# small file helpers
# ----------------------------------------------------------------------------------
class _HashingWriter:
    """File wrapper that sha256-hashes what is written through it."""

    def __init__(self, f):
        self.f = f
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def write(self, b):
        mv = memoryview(b).cast("B")
        self.sha.update(mv)
        self.nbytes += mv.nbytes
        return self.f.write(mv)


def save_npy_atomic(path: Path, array: np.ndarray) -> tuple[str, int]:
    """np.save through audio_dcls.io.atomic_open; returns (sha256 hex, size in bytes)."""
    with atomic_open(path, "wb") as f:
        w = _HashingWriter(f)
        np.lib.format.write_array(w, np.ascontiguousarray(array), allow_pickle=False)
    return w.sha.hexdigest(), w.nbytes


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def shard_stem(index: int) -> str:
    return f"{index:05d}"


def parse_part(spec: str) -> tuple[int, int]:
    """'i/N' -> (i, N) with 0 <= i < N."""
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/N (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {spec}: need 0 <= i < N")
    return i, n


def default_shard_size(num_clips: int) -> int:
    """Aim at >= 64 shards (parallelism, resume granularity) of 16..512 clips (<= 131 MB each)."""
    return int(min(512, max(16, -(-num_clips // 64))))


# ----------------------------------------------------------------------------------
# plan and shard records
# ----------------------------------------------------------------------------------
@dataclass
class Plan:
    frontend: LogMelConfig
    vocabulary: LabelVocabulary
    source: dict  # the source's description (kind, paths)
    fingerprint: str  # sha256 of the ordered (id, labels) list + vocabulary
    num_clips: int  # clips the source offers (the missing ones are in `missing`)
    shard_size: int
    part: tuple[int, int] = (0, 1)  # this folder builds shards k with k % N == i
    missing: list[list[str]] = field(default_factory=list)  # [id, reason] from the source

    @property
    def num_shards(self) -> int:
        return -(-self.num_clips // self.shard_size)

    def shards_of_part(self) -> list[int]:
        i, n = self.part
        return [k for k in range(self.num_shards) if k % n == i]

    def same_inputs(self, other: "Plan") -> bool:
        return (
            self.fingerprint == other.fingerprint
            and self.frontend == other.frontend
            and self.vocabulary == other.vocabulary
            and self.shard_size == other.shard_size
            and self.num_clips == other.num_clips
        )

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "frontend": self.frontend.to_dict(),
            "vocabulary": self.vocabulary.to_dict(),
            "source": self.source,
            "fingerprint": self.fingerprint,
            "num_clips": self.num_clips,
            "shard_size": self.shard_size,
            "num_shards": self.num_shards,
            "part": f"{self.part[0]}/{self.part[1]}",
            "missing": self.missing,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        _check_format(d, "plan.json")
        return cls(
            frontend=LogMelConfig.from_dict(d["frontend"]),
            vocabulary=LabelVocabulary.from_dict(d["vocabulary"]),
            source=d["source"],
            fingerprint=d["fingerprint"],
            num_clips=int(d["num_clips"]),
            shard_size=int(d["shard_size"]),
            part=parse_part(d["part"]),
            missing=[list(x) for x in d.get("missing", [])],
        )

    @classmethod
    def read(cls, folder: Path) -> "Plan":
        p = Path(folder) / "plan.json"
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except FileNotFoundError:
            raise StoreError(f"{folder} is not a feature store (no plan.json)") from None
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f"{p} is damaged ({e})") from None


def _check_format(d: dict, what: str) -> None:
    if d.get("format") != FORMAT:
        raise StoreError(f"{what} is not an audio_dcls feature store file")
    if d.get("format_version") != FORMAT_VERSION:
        raise StoreError(f"{what} has format version {d.get('format_version')}; this code reads version {FORMAT_VERSION}")


def read_shard_record(folder: Path, index: int) -> dict | None:
    """The shard's commit record if the shard is complete on disk, else None."""
    shards = Path(folder) / SHARD_DIR
    rec_path = shards / f"{shard_stem(index)}.json"
    try:
        rec = json.loads(rec_path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    for key in ("features", "targets"):
        f = shards / rec[key]["file"]
        try:
            if f.stat().st_size != rec[key]["bytes"]:
                return None
        except FileNotFoundError:
            return None
    return rec


def write_shard(folder: Path, index: int, ids: Sequence[str], features: np.ndarray, targets: np.ndarray, skipped: Sequence[tuple[str, str]], extra: dict | None = None) -> dict:
    """Write one shard atomically: both .npy files first, the JSON record last."""
    shards = Path(folder) / SHARD_DIR
    stem = shard_stem(index)
    if features.dtype != np.float16 or features.ndim != 3 or len(features) != len(ids):
        raise ValueError(f"shard {index}: features must be float16 (n, F, T) for {len(ids)} ids, got {features.dtype} {features.shape}")
    if targets.dtype != np.uint8 or targets.shape[0] != len(ids):
        raise ValueError(f"shard {index}: targets must be uint8 (n, C), got {targets.dtype} {targets.shape}")
    fsha, fbytes = save_npy_atomic(shards / f"{stem}.features.npy", features)
    tsha, tbytes = save_npy_atomic(shards / f"{stem}.targets.npy", targets)
    record = {
        "shard": index,
        "num_clips": len(ids),
        "ids": list(ids),
        "skipped": [list(s) for s in skipped],
        "features": {"file": f"{stem}.features.npy", "sha256": fsha, "bytes": fbytes, "shape": list(features.shape), "dtype": "float16"},
        "targets": {"file": f"{stem}.targets.npy", "sha256": tsha, "bytes": tbytes, "shape": list(targets.shape), "dtype": "uint8"},
        **(extra or {}),
    }
    atomic_write_json(shards / f"{stem}.json", record)
    return record


def remove_stale_store_temps(folder: Path) -> int:
    """Delete the temp files a killed build left in the store and its shard folder."""
    return sum(remove_stale_temp_files(d) for d in (Path(folder), Path(folder) / SHARD_DIR))


# ----------------------------------------------------------------------------------
# finalize / merge
# ----------------------------------------------------------------------------------
def finalize_store(folder: Path) -> dict:
    """Join the shard records of a complete single-part store into manifest.json,
    ids.txt, labels.csv and skipped.csv. Raises StoreError if shards are missing."""
    folder = Path(folder)
    plan = Plan.read(folder)
    if plan.part != (0, 1):
        raise StoreError(f"{folder} holds part {plan.part[0]}/{plan.part[1]} only; join the parts with `precompute merge`")
    records, absent = [], []
    for k in range(plan.num_shards):
        rec = read_shard_record(folder, k)
        (records.append(rec) if rec is not None else absent.append(k))
    if absent:
        raise StoreError(f"{folder}: {len(absent)} of {plan.num_shards} shards are not finished (e.g. shard {absent[0]}); rerun the build to complete them")
    ids = [i for r in records for i in r["ids"]]
    if len(set(ids)) != len(ids):
        raise StoreError(f"{folder}: some clip ids occur in more than one shard")
    skipped = [tuple(x) for x in plan.missing] + [tuple(s) for r in records for s in r["skipped"]]
    ids_text = "".join(f"{i}\n" for i in ids)
    atomic_write(folder / "ids.txt", ids_text)
    plan.vocabulary.to_csv(folder / "labels.csv")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "reason"])
    w.writerows(skipped)
    atomic_write(folder / "skipped.csv", buf.getvalue())
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "num_clips": len(ids),
        "num_skipped": len(skipped),
        "num_classes": len(plan.vocabulary),
        "feature_shape": [plan.frontend.n_mels, plan.frontend.num_frames],
        "feature_dtype": "float16",
        "frontend": plan.frontend.to_dict(),
        "vocabulary": plan.vocabulary.to_dict(),
        "source": plan.source,
        "fingerprint": plan.fingerprint,
        "ids": {"file": "ids.txt", "sha256": hashlib.sha256(ids_text.encode()).hexdigest()},
        "shards": [
            {
                "shard": r["shard"],
                "num_clips": r["num_clips"],
                "features": {k: r["features"][k] for k in ("file", "sha256", "bytes")},
                "targets": {k: r["targets"][k] for k in ("file", "sha256", "bytes")},
            }
            for r in records
        ],
    }
    atomic_write_json(folder / "manifest.json", manifest)
    return manifest


def _link_or_copy(src: Path, dst: Path, copy: bool) -> None:
    if not copy:
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or no hard links there
            pass
    with atomic_path(dst) as tmp:
        shutil.copy2(src, tmp)


def merge_parts(out: Path, parts: Sequence[Path], copy: bool = False) -> dict:
    """Join the folders of a ``--shard i/N`` build into one finished store at ``out``.

    Every part must come from the same inputs and be complete; together they must
    cover i = 0..N-1 exactly once. Shard files are hard-linked when possible
    (``copy=True`` or another file system: copied)."""
    out = Path(out)
    plans = [(Path(p), Plan.read(Path(p))) for p in parts]
    if not plans:
        raise StoreError("merge needs at least one part")
    first = plans[0][1]
    n = first.part[1]
    seen: dict[int, Path] = {}
    for p, plan in plans:
        if not plan.same_inputs(first):
            raise StoreError(f"{p} was built from other inputs or settings than {plans[0][0]}; cannot merge")
        if plan.part[1] != n:
            raise StoreError(f"{p} is part {plan.part[0]}/{plan.part[1]} but {plans[0][0]} splits into {n} parts")
        if plan.part[0] in seen:
            raise StoreError(f"part {plan.part[0]}/{n} given twice ({seen[plan.part[0]]} and {p})")
        seen[plan.part[0]] = p
    absent = [i for i in range(n) if i not in seen]
    if absent:
        raise StoreError(f"parts missing: {', '.join(f'{i}/{n}' for i in absent)}")
    for p, plan in plans:
        unfinished = [k for k in plan.shards_of_part() if read_shard_record(p, k) is None]
        if unfinished:
            raise StoreError(f"{p}: part {plan.part[0]}/{n} is unfinished ({len(unfinished)} shards to go); rerun its build")
    if out.exists() and any(out.iterdir()):
        raise StoreError(f"{out} exists and is not empty; merge into a new folder")
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    for p, plan in plans:
        for k in plan.shards_of_part():
            for suffix in (".features.npy", ".targets.npy", ".json"):
                src = p / SHARD_DIR / f"{shard_stem(k)}{suffix}"
                _link_or_copy(src, out / SHARD_DIR / src.name, copy)
    fsync_dir(out / SHARD_DIR)
    merged = Plan(first.frontend, first.vocabulary, first.source, first.fingerprint, first.num_clips, first.shard_size, (0, 1), first.missing)
    atomic_write_json(out / "plan.json", merged.to_dict())
    return finalize_store(out)


# ----------------------------------------------------------------------------------
# verify
# ----------------------------------------------------------------------------------
@dataclass
class VerifyReport:
    folder: Path
    num_clips: int = 0
    num_shards: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(folder: str | os.PathLike, checksums: bool = True) -> VerifyReport:
    """Check a finished store: every file present with its size and sha256, array
    shapes/dtypes, counts (shards vs manifest vs ids.txt), unique ids."""
    folder = Path(folder)
    report = VerifyReport(folder)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        _check_format(manifest, "manifest.json")
    except FileNotFoundError:
        report.problems.append("no manifest.json: the store is unfinished or not a feature store")
        return report
    except (ValueError, StoreError) as e:
        report.problems.append(f"manifest.json is damaged ({e})")
        return report
    report.num_clips = manifest["num_clips"]
    report.num_shards = len(manifest["shards"])
    F, T = manifest["feature_shape"]
    C = manifest["num_classes"]

    def check_file(rel: str, meta: dict) -> bool:
        f = folder / rel
        if not f.is_file():
            report.problems.append(f"{rel}: missing")
            return False
        if "bytes" in meta and f.stat().st_size != meta["bytes"]:
            report.problems.append(f"{rel}: size {f.stat().st_size} bytes, manifest says {meta['bytes']}")
            return False
        if checksums and sha256_file(f) != meta["sha256"]:
            report.problems.append(f"{rel}: sha256 mismatch (the file changed since it was written)")
            return False
        return True

    ids: list[str] = []
    if check_file("ids.txt", manifest["ids"]):
        ids = (folder / "ids.txt").read_text(encoding="utf-8").splitlines()
    total = 0
    for s in manifest["shards"]:
        n = s["num_clips"]
        total += n
        for key, shape, dtype in (("features", (n, F, T), np.float16), ("targets", (n, C), np.uint8)):
            rel = f"{SHARD_DIR}/{s[key]['file']}"
            if not check_file(rel, s[key]):
                continue
            try:
                a = np.load(folder / rel, mmap_mode="r")
            except ValueError as e:
                report.problems.append(f"{rel}: unreadable .npy ({e})")
                continue
            if a.shape != shape or a.dtype != dtype:
                report.problems.append(f"{rel}: {a.dtype} {a.shape}, expected {np.dtype(dtype)} {shape}")
            del a
    if total != manifest["num_clips"]:
        report.problems.append(f"shards hold {total} clips, manifest says {manifest['num_clips']}")
    if ids and len(ids) != manifest["num_clips"]:
        report.problems.append(f"ids.txt lists {len(ids)} clips, manifest says {manifest['num_clips']}")
    if ids and len(set(ids)) != len(ids):
        report.problems.append(f"ids.txt repeats {len(ids) - len(set(ids))} clip ids")
    return report


# ----------------------------------------------------------------------------------
# the reader
# ----------------------------------------------------------------------------------
try:
    from torch.utils.data import Dataset as _Dataset
except ImportError:  # pragma: no cover - torch is a hard dependency; keeps the writer importable
    _Dataset = object


class FeatureStore(_Dataset):
    """A finished feature store as a map-style torch Dataset.

    ``store[i]`` -> (log-mel (1, n_mels, T) tensor in ``feature_dtype``, target (C,)
    float32 tensor). Features are memory-mapped: nothing is read until asked for, and
    DataLoader workers (fork or spawn) each open their own maps, for at most
    ``max_open_shards`` shards at a time (each map holds a file descriptor).

    Attributes: ``ids`` (list of clip ids), ``labels`` ((N, C) uint8 array),
    ``frontend`` (LogMelConfig), ``vocabulary`` (LabelVocabulary), ``skipped``
    ([(id, reason)]), ``manifest`` (dict).
    """

    def __init__(self, folder: str | os.PathLike, feature_dtype=None, max_open_shards: int = 64):
        import torch

        self.folder = Path(folder)
        mpath = self.folder / "manifest.json"
        try:
            self.manifest = json.loads(mpath.read_text())
        except FileNotFoundError:
            if (self.folder / "plan.json").exists():
                raise StoreError(f"{self.folder} is an unfinished feature store (no manifest.json); finish it with `python -m pipelines.precompute build` or `merge`") from None
            raise StoreError(f"{self.folder} is not a feature store (no manifest.json)") from None
        _check_format(self.manifest, str(mpath))
        self.frontend = LogMelConfig.from_dict(self.manifest["frontend"])
        self.vocabulary = LabelVocabulary.from_dict(self.manifest["vocabulary"])
        self.feature_dtype = feature_dtype if feature_dtype is not None else torch.float32
        self.max_open_shards = max_open_shards
        self.ids: list[str] = (self.folder / "ids.txt").read_text(encoding="utf-8").splitlines()
        self._shards = self.manifest["shards"]
        counts = np.array([s["num_clips"] for s in self._shards], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        if self._offsets[-1] != len(self.ids) or len(self.ids) != self.manifest["num_clips"]:
            raise StoreError(f"{self.folder}: ids.txt and the shard counts disagree; run `python -m pipelines.precompute verify {self.folder}`")
        self._labels = None
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()
        self._pid = os.getpid()

    # numpy memmaps must not cross a process boundary by pickling (spawned workers)
    def __getstate__(self):
        d = self.__dict__.copy()
        d["_maps"] = OrderedDict()
        return d

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.vocabulary)

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        F, T = self.manifest["feature_shape"]
        return (1, F, T)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        p = self.folder / "skipped.csv"
        if not p.exists():
            return []
        with open(p, newline="", encoding="utf-8") as f:
            return [(r["id"], r["reason"]) for r in csv.DictReader(f)]

    @property
    def labels(self) -> np.ndarray:
        """(N, C) uint8 multi-hot labels of all clips, in store order (read once, kept; samplers
        and metrics use it -- ``store[i]`` reads its row from the shard instead)."""
        if self._labels is None:
            parts = [np.load(self.folder / SHARD_DIR / s["targets"]["file"]) for s in self._shards]
            C = len(self.vocabulary)
            self._labels = np.concatenate(parts) if parts else np.zeros((0, C), np.uint8)
        return self._labels

    def positives(self) -> np.ndarray:
        """(C,) clips per class, summed shard by shard (never all labels in memory at once)."""
        counts = np.zeros(len(self.vocabulary), dtype=np.int64)
        for s in self._shards:
            counts += np.load(self.folder / SHARD_DIR / s["targets"]["file"], mmap_mode="r").sum(axis=0, dtype=np.int64)
        return counts

    def close(self) -> None:
        """Drop the memory maps (and the file descriptors they hold); they reopen when read."""
        self._maps = OrderedDict()

    def _map(self, shard: int, kind: str) -> np.ndarray:
        """Memory map of a shard's features or targets (LRU: each map holds a file descriptor)."""
        if self._pid != os.getpid():  # forked: maps from the parent stay valid, but keep our own table
            self._maps = OrderedDict()
            self._pid = os.getpid()
        key = (shard, kind)
        m = self._maps.get(key)
        if m is None:
            m = np.load(self.folder / SHARD_DIR / self._shards[shard][kind]["file"], mmap_mode="r")
            self._maps[key] = m
            while len(self._maps) > 2 * self.max_open_shards:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(key)
        return m

    def logmel(self, i: int) -> np.ndarray:
        """(n_mels, T) float16 log-mel of clip i."""
        shard, row = self._locate(i)
        return np.array(self._map(shard, "features")[row])

    def target(self, i: int) -> np.ndarray:
        """(C,) float32 multi-hot labels of clip i (read from its shard, not from ``labels``)."""
        shard, row = self._locate(i)
        return self._map(shard, "targets")[row].astype(np.float32)

    def _locate(self, i: int) -> tuple[int, int]:
        n = len(self.ids)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for a store of {n} clips")
        shard = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return shard, i - int(self._offsets[shard])

    def __getitem__(self, i: int):
        import torch

        i = int(i)
        x = torch.from_numpy(self.logmel(i)).unsqueeze(0).to(self.feature_dtype)  # (1, F, T)
        y = torch.from_numpy(self.target(i))  # (C,)
        return x, y

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.folder)!r}, {len(self)} clips, {len(self.vocabulary)} classes, features {self.feature_shape})"
