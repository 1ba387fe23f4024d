"""The offline store: training clips as fp16 log-mels or int16 waveforms, plus labels;
sharded, checksummed, resumable, mergeable.

Two kinds (the manifest's ``kind``): ``logmel`` holds the front end's output, float16
(n_mels, T) per clip; ``waveform`` holds the clip itself, int16 mono at the front end's
rate (``q = round(x * 32768)`` clipped, read back as ``q / 32768``), so the training
device can augment it and run the front end (the paper's data path). Clips are padded
or cut to the clip length -- or, in a store built with ``max_seconds``, kept whole up
to that length (variable-length shards with an offsets file).

Layout of a store folder::

    plan.json                 what is being built: front end, kind, max_seconds, vocabulary,
                              source, the ordered clip list's fingerprint, shard size, part i/N
    shards/00000.features.npy float16 (n, n_mels, T) log-mels     (kind logmel; memory-mapped on read)
    shards/00000.waveforms.npy int16 (n, L) waveforms             (kind waveform)
                              variable length: (n_mels, sum T_i) / (sum L_i,), clip i being
                              [offsets[i], offsets[i + 1]) along the time axis
    shards/00000.offsets.npy  int64 (n + 1,) clip boundaries     (variable length only)
    shards/00000.targets.npy  uint8 (n, C) multi-hot labels
    shards/00000.json         the shard's commit record: ids, skipped clips and why,
                              sha256 and size of every .npy file (written last)
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
from typing import Optional, Sequence

import numpy as np

from audio_dcls.features import LogMelConfig
from audio_dcls.io import atomic_open, atomic_path, atomic_write, atomic_write_json, fsync_dir, remove_stale_temp_files
from audio_dcls.labels import LabelVocabulary

log = logging.getLogger(__name__)

FORMAT = "audio_dcls.feature_store"
FORMAT_VERSION = 2  # 2: store kinds (logmel, waveform) and variable-length clips
READABLE_VERSIONS = (1, 2)  # version 1: fixed-length log-mel stores
SHARD_DIR = "shards"
LOGMEL, WAVEFORM = "logmel", "waveform"
STORE_KINDS = (LOGMEL, WAVEFORM)
PCM16_SCALE = 32768.0  # int16 sample q stands for q / 32768 (DCLS-Audio reads its packs as int16 / 2**15)
SHARD_BYTES = 256 << 20  # default shards hold at most this much clip data
_DATA_SUFFIX = {LOGMEL: "features", WAVEFORM: "waveforms"}
_SHARD_FILES = ("features", "targets", "offsets")  # the .npy files a shard record may name


class StoreError(RuntimeError):
    """A feature store that is missing, unfinished, inconsistent or from other inputs."""


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """float samples in [-1, 1] -> int16 ``round(x * 32768)`` clipped to [-32768, 32767] (inverse: q / 32768)."""
    return np.clip(np.rint(np.asarray(x, np.float32) * np.float32(PCM16_SCALE)), -32768, 32767).astype(np.int16)


@dataclass(frozen=True)
class ClipLayout:
    """How a store holds one clip: its kind, dtype, shape along the time axis, and length limits.

    Lengths are counted in the store's time *units*: samples (waveform) or frames (logmel).
    ``window`` is the clip length in units -- what a training item is; ``stride`` is the
    clip length as a step along the time axis (L samples, or L / hop frames).
    """

    kind: str = LOGMEL  # 'logmel' or 'waveform'
    frontend: LogMelConfig = LogMelConfig()
    max_seconds: Optional[float] = None  # None: every clip padded/cut to frontend.clip_seconds; else kept whole up to this

    def __post_init__(self):
        if self.kind not in STORE_KINDS:
            raise ValueError(f"store kind must be one of {', '.join(STORE_KINDS)}, got {self.kind!r}")
        if self.max_seconds is not None and self.max_seconds < self.frontend.clip_seconds:
            raise ValueError(f"max_seconds ({self.max_seconds:g}) must be at least the clip length ({self.frontend.clip_seconds:g} s)")

    @property
    def variable(self) -> bool:
        return self.max_seconds is not None

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.int16 if self.kind == WAVEFORM else np.float16)

    @property
    def unit(self) -> str:
        return "samples" if self.kind == WAVEFORM else "frames"

    @property
    def num_samples(self) -> int:
        """Samples of a clip of the clip length (320000 for 10 s at 32 kHz)."""
        return int(round(self.frontend.clip_seconds * self.frontend.sample_rate))

    @property
    def max_samples(self) -> int:
        """The longest clip kept, in samples (the clip length when not variable)."""
        return self.num_samples if self.max_seconds is None else int(round(self.max_seconds * self.frontend.sample_rate))

    def units(self, num_samples: int) -> int:
        """Length along the time axis of a clip of ``num_samples`` samples (LogMel.num_frames for log-mels)."""
        if self.kind == WAVEFORM:
            return int(num_samples)
        return max(int(num_samples), self.frontend.n_fft // 2 + 1) // self.frontend.hop_length + 1

    @property
    def window(self) -> int:
        return self.units(self.num_samples)

    @property
    def stride(self) -> int:
        return self.num_samples if self.kind == WAVEFORM else self.num_samples // self.frontend.hop_length

    def clip_shape(self, length: Optional[int] = None) -> tuple:
        """Shape of one clip of ``length`` units (default: the clip length): (L,) or (n_mels, T)."""
        n = self.window if length is None else int(length)
        return (n,) if self.kind == WAVEFORM else (self.frontend.n_mels, n)

    @property
    def bytes_per_clip(self) -> int:
        """Bytes of the longest clip the store may hold."""
        return int(np.prod(self.clip_shape(self.units(self.max_samples)))) * self.dtype.itemsize


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


def default_shard_size(num_clips: int, bytes_per_clip: int = ClipLayout().bytes_per_clip) -> int:
    """Aim at >= 64 shards (parallelism, resume granularity) of 16..512 clips and at most
    SHARD_BYTES of clip data (10 s log-mels: 512 clips, 131 MB; waveforms: 419 clips, 268 MB)."""
    by_count = int(min(512, max(16, -(-num_clips // 64))))
    return max(1, min(by_count, SHARD_BYTES // max(1, bytes_per_clip)))


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
    kind: str = LOGMEL  # what a clip is stored as: 'logmel' or 'waveform'
    max_seconds: Optional[float] = None  # None: clips padded/cut to the clip length; else kept whole up to this

    @property
    def layout(self) -> ClipLayout:
        return ClipLayout(self.kind, self.frontend, self.max_seconds)

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
            and self.kind == other.kind
            and self.max_seconds == other.max_seconds
            and self.vocabulary == other.vocabulary
            and self.shard_size == other.shard_size
            and self.num_clips == other.num_clips
        )

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "max_seconds": self.max_seconds,
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
            kind=d.get("kind", LOGMEL),
            max_seconds=d.get("max_seconds"),
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
    if d.get("format_version") not in READABLE_VERSIONS:
        raise StoreError(f"{what} has format version {d.get('format_version')}; this code reads versions {', '.join(map(str, READABLE_VERSIONS))}")


def read_shard_record(folder: Path, index: int) -> dict | None:
    """The shard's commit record if the shard is complete on disk, else None."""
    shards = Path(folder) / SHARD_DIR
    rec_path = shards / f"{shard_stem(index)}.json"
    try:
        rec = json.loads(rec_path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    for key in _SHARD_FILES:
        if key not in rec:
            continue
        f = shards / rec[key]["file"]
        try:
            if f.stat().st_size != rec[key]["bytes"]:
                return None
        except FileNotFoundError:
            return None
    return rec


def _check_shard_arrays(index: int, ids: Sequence[str], features, targets: np.ndarray, layout: ClipLayout) -> None:
    what = f"{np.dtype(layout.dtype).name} {'(n, F, T)' if layout.kind == LOGMEL else '(n, L)'}"
    if layout.variable:
        ok = len(features) == len(ids) and all(a.dtype == layout.dtype and a.shape[:-1] == layout.clip_shape()[:-1] for a in features)
        if not ok:
            raise ValueError(f"shard {index}: a variable-length shard takes one {np.dtype(layout.dtype).name} array per clip for {len(ids)} ids")
    elif features.dtype != layout.dtype or features.ndim != len(layout.clip_shape()) + 1 or len(features) != len(ids):
        raise ValueError(f"shard {index}: features must be {what} for {len(ids)} ids, got {features.dtype} {features.shape}")
    if targets.dtype != np.uint8 or targets.shape[0] != len(ids):
        raise ValueError(f"shard {index}: targets must be uint8 (n, C), got {targets.dtype} {targets.shape}")


def write_shard(folder: Path, index: int, ids: Sequence[str], features, targets: np.ndarray, skipped: Sequence[tuple[str, str]], extra: dict | None = None, layout: ClipLayout = ClipLayout()) -> dict:
    """Write one shard atomically: the .npy files first, the JSON record last.

    ``features``: an (n, *clip shape) array of ``layout.dtype``; for a variable-length
    layout a list of n clip arrays, concatenated along the time axis with an offsets file."""
    shards = Path(folder) / SHARD_DIR
    stem = shard_stem(index)
    _check_shard_arrays(index, ids, features, targets, layout)
    record = {"shard": index, "num_clips": len(ids), "ids": list(ids), "skipped": [list(s) for s in skipped]}
    if layout.variable:
        lengths = [a.shape[-1] for a in features]
        offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
        empty = np.zeros(layout.clip_shape(0), layout.dtype)
        features = np.concatenate(list(features), axis=-1) if len(lengths) else empty  # (F, sum T) or (sum L,)
        osha, obytes = save_npy_atomic(shards / f"{stem}.offsets.npy", offsets)
        record["offsets"] = {"file": f"{stem}.offsets.npy", "sha256": osha, "bytes": obytes, "shape": list(offsets.shape), "dtype": "int64"}
    name = f"{stem}.{_DATA_SUFFIX[layout.kind]}.npy"
    fsha, fbytes = save_npy_atomic(shards / name, features)
    tsha, tbytes = save_npy_atomic(shards / f"{stem}.targets.npy", targets)
    record["features"] = {"file": name, "sha256": fsha, "bytes": fbytes, "shape": list(features.shape), "dtype": np.dtype(layout.dtype).name}
    record["targets"] = {"file": f"{stem}.targets.npy", "sha256": tsha, "bytes": tbytes, "shape": list(targets.shape), "dtype": "uint8"}
    record.update(extra or {})
    atomic_write_json(shards / f"{stem}.json", record)
    return record


def remove_stale_store_temps(folder: Path) -> int:
    """Delete the temp files a killed build left in the store and its shard folder."""
    return sum(remove_stale_temp_files(d) for d in (Path(folder), Path(folder) / SHARD_DIR))


# ----------------------------------------------------------------------------------
# finalize / merge
# ----------------------------------------------------------------------------------
def _length_summary(folder: Path, layout: ClipLayout, records: Sequence[dict]) -> dict:
    """Clip lengths of a variable-length store, in units and seconds, for the manifest."""
    lengths = [np.diff(np.load(folder / SHARD_DIR / r["offsets"]["file"])) for r in records]
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    per_second = layout.frontend.sample_rate if layout.kind == WAVEFORM else layout.frontend.sample_rate / layout.frontend.hop_length
    return {
        "unit": layout.unit,
        "min": int(lengths.min()) if len(lengths) else 0,
        "max": int(lengths.max()) if len(lengths) else 0,
        "longest_seconds": round(float(lengths.max()) / per_second, 3) if len(lengths) else 0.0,
        "longer_than_clip": int((lengths > layout.window).sum()),
    }


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
    layout = plan.layout
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "kind": plan.kind,
        "num_clips": len(ids),
        "num_skipped": len(skipped),
        "num_classes": len(plan.vocabulary),
        "feature_shape": list(layout.clip_shape()),  # one clip of the clip length
        "feature_dtype": np.dtype(layout.dtype).name,
        "max_seconds": plan.max_seconds,
        "frontend": plan.frontend.to_dict(),
        "vocabulary": plan.vocabulary.to_dict(),
        "source": plan.source,
        "fingerprint": plan.fingerprint,
        "ids": {"file": "ids.txt", "sha256": hashlib.sha256(ids_text.encode()).hexdigest()},
        "shards": [
            {"shard": r["shard"], "num_clips": r["num_clips"], **{key: {k: r[key][k] for k in ("file", "sha256", "bytes")} for key in _SHARD_FILES if key in r}}
            for r in records
        ],
    }
    if layout.variable:
        manifest["lengths"] = _length_summary(folder, layout, records)
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
    records: dict[int, tuple[Path, dict]] = {}
    for p, plan in plans:
        unfinished = []
        for k in plan.shards_of_part():
            rec = read_shard_record(p, k)
            (unfinished.append(k) if rec is None else records.__setitem__(k, (p, rec)))
        if unfinished:
            raise StoreError(f"{p}: part {plan.part[0]}/{n} is unfinished ({len(unfinished)} shards to go); rerun its build")
    if out.exists() and any(out.iterdir()):
        raise StoreError(f"{out} exists and is not empty; merge into a new folder")
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    for k, (p, rec) in sorted(records.items()):
        for name in [rec[key]["file"] for key in _SHARD_FILES if key in rec] + [f"{shard_stem(k)}.json"]:
            _link_or_copy(p / SHARD_DIR / name, out / SHARD_DIR / name, copy)
    fsync_dir(out / SHARD_DIR)
    merged = Plan(first.frontend, first.vocabulary, first.source, first.fingerprint, first.num_clips, first.shard_size, (0, 1), first.missing, first.kind, first.max_seconds)
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


def manifest_layout(manifest: dict) -> ClipLayout:
    """The clip layout a manifest (or plan) describes; version 1 stores are fixed-length log-mels."""
    return ClipLayout(manifest.get("kind", LOGMEL), LogMelConfig.from_dict(manifest["frontend"]), manifest.get("max_seconds"))


def _load_checked(report: VerifyReport, folder: Path, rel: str):
    try:
        return np.load(folder / rel, mmap_mode="r")
    except ValueError as e:
        report.problems.append(f"{rel}: unreadable .npy ({e})")
        return None


def _check_variable_shard(report: VerifyReport, folder: Path, s: dict, layout: ClipLayout, check_file) -> None:
    """A variable-length shard: offsets from 0, increasing by at least the clip length, ending at the data's length."""
    n = s["num_clips"]
    rel = f"{SHARD_DIR}/{s['offsets']['file']}"
    if not check_file(rel, s["offsets"]) or (offsets := _load_checked(report, folder, rel)) is None:
        return
    lengths = np.diff(offsets)
    if offsets.shape != (n + 1,) or offsets.dtype != np.int64 or offsets[0] != 0 or (lengths < layout.window).any():
        report.problems.append(f"{rel}: not {n + 1} int64 clip boundaries from 0, each clip at least {layout.window} {layout.unit}")
        return
    rel = f"{SHARD_DIR}/{s['features']['file']}"
    if check_file(rel, s["features"]) and (a := _load_checked(report, folder, rel)) is not None:
        shape = layout.clip_shape(int(offsets[-1]))
        if a.shape != shape or a.dtype != layout.dtype:
            report.problems.append(f"{rel}: {a.dtype} {a.shape}, expected {layout.dtype} {shape}")


def _check_fixed_shard(report: VerifyReport, folder: Path, s: dict, layout: ClipLayout, check_file) -> None:
    rel = f"{SHARD_DIR}/{s['features']['file']}"
    shape = (s["num_clips"], *layout.clip_shape())
    if check_file(rel, s["features"]) and (a := _load_checked(report, folder, rel)) is not None:
        if a.shape != shape or a.dtype != layout.dtype:
            report.problems.append(f"{rel}: {a.dtype} {a.shape}, expected {layout.dtype} {shape}")


def verify_store(folder: str | os.PathLike, checksums: bool = True) -> VerifyReport:
    """Check a finished store: every file present with its size and sha256, array
    shapes/dtypes (and clip boundaries), counts (shards vs manifest vs ids.txt), unique ids."""
    folder = Path(folder)
    report = VerifyReport(folder)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        _check_format(manifest, "manifest.json")
        layout = manifest_layout(manifest)
    except FileNotFoundError:
        report.problems.append("no manifest.json: the store is unfinished or not a feature store")
        return report
    except (ValueError, KeyError, StoreError) as e:
        report.problems.append(f"manifest.json is damaged ({e})")
        return report
    report.num_clips = manifest["num_clips"]
    report.num_shards = len(manifest["shards"])
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
        if layout.variable:
            _check_variable_shard(report, folder, s, layout, check_file)
        else:
            _check_fixed_shard(report, folder, s, layout, check_file)
        rel = f"{SHARD_DIR}/{s['targets']['file']}"
        if check_file(rel, s["targets"]) and (a := _load_checked(report, folder, rel)) is not None:
            if a.shape != (n, C) or a.dtype != np.uint8:
                report.problems.append(f"{rel}: {a.dtype} {a.shape}, expected uint8 {(n, C)}")
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
    """A finished store (either kind) as a map-style torch Dataset.

    ``store[i]`` -> (clip, target (C,) float32 tensor); the clip is the log-mel
    (1, n_mels, T) in ``feature_dtype`` (default float32) of a log-mel store, or the
    int16 waveform (L,) of a waveform store (``feature_dtype``: a float dtype gives
    ``q / 32768``). A variable-length store gives each clip whole. :meth:`read` gives the
    stored array or a window of it, without a copy if asked. Shards are memory-mapped:
    nothing is read until asked for, and DataLoader workers (fork or spawn) each open
    their own maps, for at most ``max_open_shards`` shards at a time (each map holds a
    file descriptor). The maps are private (copy-on-write): writing into an array read
    with ``copy=False`` never reaches the file.

    Attributes: ``kind`` ('logmel' or 'waveform'), ``layout`` (ClipLayout), ``ids``,
    ``labels`` ((N, C) uint8), ``lengths`` ((N,) clip lengths in the layout's units),
    ``frontend`` (LogMelConfig), ``vocabulary``, ``skipped`` ([(id, reason)]), ``manifest``.
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
        self.layout = manifest_layout(self.manifest)
        self.kind = self.layout.kind
        self.frontend = self.layout.frontend
        self.vocabulary = LabelVocabulary.from_dict(self.manifest["vocabulary"])
        stored = torch.int16 if self.kind == WAVEFORM else torch.float32
        self.feature_dtype = feature_dtype if feature_dtype is not None else stored
        self.max_open_shards = max_open_shards
        self.ids: list[str] = (self.folder / "ids.txt").read_text(encoding="utf-8").splitlines()
        self._shards = self.manifest["shards"]
        counts = np.array([s["num_clips"] for s in self._shards], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        if self._offsets[-1] != len(self.ids) or len(self.ids) != self.manifest["num_clips"]:
            raise StoreError(f"{self.folder}: ids.txt and the shard counts disagree; run `python -m pipelines.precompute verify {self.folder}`")
        self._labels = None
        self._clip_bounds: dict[int, np.ndarray] = {}  # shard -> (n + 1,) clip boundaries (variable length)
        self._maps: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
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
    def feature_shape(self) -> tuple:
        """Shape of ``store[i]``'s clip at the clip length: (1, n_mels, T) or (L,)."""
        shape = self.layout.clip_shape()
        return (1, *shape) if self.kind == LOGMEL else shape

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

    @property
    def lengths(self) -> np.ndarray:
        """(N,) int64 length of every clip along the time axis, in ``layout.unit`` (read from the offsets files)."""
        if not self.layout.variable:
            return np.full(len(self), self.layout.window, dtype=np.int64)
        parts = [np.diff(self._bounds(k)) for k in range(len(self._shards))]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def positives(self, weights: Optional[np.ndarray] = None) -> np.ndarray:
        """(C,) clips per class, summed shard by shard (never all labels in memory at once);
        ``weights``: (N,) how many times each clip counts (e.g. its windows) instead of once."""
        counts = np.zeros(len(self.vocabulary), dtype=np.int64)
        for k, s in enumerate(self._shards):
            t = np.load(self.folder / SHARD_DIR / s["targets"]["file"], mmap_mode="r")
            if weights is None:
                counts += t.sum(axis=0, dtype=np.int64)
            else:
                counts += np.asarray(weights[self._offsets[k] : self._offsets[k + 1]], np.int64) @ t.astype(np.int64)
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
            m = np.load(self.folder / SHARD_DIR / self._shards[shard][kind]["file"], mmap_mode="c")
            self._maps[key] = m
            while len(self._maps) > 2 * self.max_open_shards:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(key)
        return m

    def _bounds(self, shard: int) -> np.ndarray:
        b = self._clip_bounds.get(shard)
        if b is None:
            b = self._clip_bounds[shard] = np.load(self.folder / SHARD_DIR / self._shards[shard]["offsets"]["file"])
        return b

    def read(self, i: int, start: int = 0, length: Optional[int] = None, copy: bool = True) -> np.ndarray:
        """Clip i as stored -- (n_mels, T) float16 or (L,) int16 -- or its window
        ``[start, start + length)`` along the time axis; ``copy=False``: a view on the map."""
        shard, row = self._locate(i)
        data = self._map(shard, "features")
        if self.layout.variable:
            b = self._bounds(shard)
            lo, hi = int(b[row]), int(b[row + 1])
        else:
            data, lo, hi = data[row], 0, data.shape[-1]
        stop = hi if length is None else lo + start + length
        if start < 0 or stop > hi:
            raise IndexError(f"clip {i}: window [{start}, {stop - lo}) outside its {hi - lo} {self.layout.unit}")
        out = data[..., lo + start : stop]
        return np.array(out) if copy else out

    def logmel(self, i: int) -> np.ndarray:
        """(n_mels, T) float16 log-mel of clip i (log-mel stores)."""
        if self.kind != LOGMEL:
            raise StoreError(f"{self.folder} is a {self.kind} store; it holds no log-mels (read(i) gives the waveform)")
        return self.read(i)

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
        x = torch.from_numpy(self.read(i))
        if self.kind == LOGMEL:
            x = x.unsqueeze(0).to(self.feature_dtype)  # (1, F, T)
        elif self.feature_dtype.is_floating_point:
            x = x.to(self.feature_dtype) / PCM16_SCALE  # (L,)
        y = torch.from_numpy(self.target(i))  # (C,)
        return x, y

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.folder)!r}, {self.kind}, {len(self)} clips, {len(self.vocabulary)} classes, clips {self.feature_shape}{', variable length' if self.layout.variable else ''})"
