"""Clip sources: where the ingest finds audio and labels.

Every source is a :class:`ClipSource`: a fixed, ordered list of :class:`Clip`
(clip id, audio path or packed waveform, label indices -> ``.target`` multi-hot
vector), the :class:`~audio_dcls.labels.LabelVocabulary` the labels index into, and
``missing`` -- clips the metadata lists but the audio is absent for (real AudioSet
copies lack 5-10 % of their YouTube clips; that is reported, never fatal).

* :class:`AudioSetSource` -- an official segment CSV (``balanced_train_segments.csv``,
  ``eval_segments.csv``, ``unbalanced_train_segments.csv``) plus an audio folder whose
  files are named ``Y{YTID}.{ext}``, ``{YTID}.{ext}``, ``{YTID}_{start}_{end}.{ext}``
  or ``Y{YTID}_{start}_{end}.{ext}`` (start/end in seconds or milliseconds), or an
  explicit manifest CSV ``ytid,path``.
* :class:`PannsHdf5Source` -- PANNs-style HDF5 packs (``audio_name`` (N,) bytes,
  ``waveform`` int16 (N, 320000) at 32 kHz, ``target`` bool (N, 527)); see
  :func:`write_panns_hdf5` for the writer.
* :class:`CustomCsvSource` -- a folder plus a CSV ``path,labels`` (labels separated by
  ``;``, any vocabulary: given, or derived from the CSV; kept by the feature store;
  see :mod:`pipelines.vocabulary` for how a command chooses it).

Constructing a source only reads: it never writes into the user's folders.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from audio_dcls.audio import AUDIO_EXTENSIONS, MAX_DURATION_S, decode_audio, load_audio, resample
from audio_dcls.io import atomic_path, atomic_write
from audio_dcls.labels import LabelVocabulary, audioset_vocabulary

log = logging.getLogger(__name__)

YTID_RE = re.compile(r"^[A-Za-z0-9_-]{11}$")
_SEGMENT_HEADER_STATS = re.compile(r"(\w+)=(\d+)")


class SkippedClip(NamedTuple):
    id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Clip:
    """One clip to ingest. Exactly one of ``path``, ``h5_path`` or ``waveform`` is set."""

    id: str
    labels: tuple[int, ...]  # indices into the source's vocabulary
    num_classes: int
    path: str | None = None  # an audio file, decoded with audio_dcls.audio.load_audio
    h5_path: str | None = None  # a PANNs pack and the row in it
    h5_row: int | None = None
    h5: "Hdf5Packs | None" = field(default=None, compare=False, repr=False)  # the source's open packs
    waveform: np.ndarray | None = field(default=None, compare=False)  # in-memory samples
    sample_rate: int | None = None  # rate of h5/in-memory samples

    @property
    def target(self) -> np.ndarray:
        """(C,) float32 multi-hot label vector."""
        y = np.zeros(self.num_classes, dtype=np.float32)
        y[list(self.labels)] = 1.0
        return y

    def load(self, target_sr: int = 32000, max_seconds: float | None = MAX_DURATION_S) -> np.ndarray:
        """Mono float32 samples at ``target_sr`` (raises AudioDecodeError on bad audio; decode
        warnings are issued as AudioDecodeWarning)."""
        if self.path is not None:
            return load_audio(self.path, target_sr=target_sr, max_seconds=max_seconds)
        return self.decode(target_sr, max_seconds)[0]

    def decode(self, target_sr: int = 32000, max_seconds: float | None = MAX_DURATION_S) -> tuple[np.ndarray, list[str]]:
        """(:meth:`load`'s samples, the decoder's warnings about the file), for jobs that report them."""
        if self.path is not None:
            decoded = decode_audio(self.path, target_sr=target_sr, max_seconds=max_seconds)
            return decoded.samples, list(decoded.warnings)
        if self.h5_path is not None:
            x = self.h5.waveform(self.h5_path, self.h5_row)
        elif self.waveform is not None:
            x = np.asarray(self.waveform)
        else:
            raise ValueError(f"clip {self.id} has no audio")
        x = _to_float(x)
        if x.ndim == 2:
            x = x.mean(axis=0, dtype=np.float32)
        rate = self.sample_rate or target_sr
        return (resample(x, rate, target_sr) if rate != target_sr else x), []


def _to_float(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.int16:
        return x.astype(np.float32) / 32768.0
    if x.dtype == np.int32:
        return (x / 2147483648.0).astype(np.float32)
    if x.dtype == np.uint8:
        return (x.astype(np.float32) - 128.0) / 128.0
    return x.astype(np.float32, copy=False)


class Hdf5Packs:
    """The open HDF5 packs of one source: opened on first read, in the process that reads.

    h5py handles must not cross a fork (or a pickle): a forked DataLoader or pool worker,
    or an unpickled copy, starts with no handles and opens its own. :meth:`close` closes
    the handles this process opened.
    """

    def __init__(self):
        self._files: dict[str, object] = {}
        self._pid = os.getpid()

    def waveform(self, path: str, row: int) -> np.ndarray:
        import h5py

        if self._pid != os.getpid():  # inherited through fork: the parent's handles are not ours to use or close
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = h5py.File(path, "r")
        return f["waveform"][row]

    def close(self) -> None:
        if self._pid == os.getpid():
            for f in self._files.values():
                f.close()
        self._files = {}

    def __getstate__(self):
        return {"_files": {}, "_pid": None}


class ClipSource:
    """An ordered list of clips with labels over one vocabulary, plus what is missing."""

    kind = "clips"

    def __init__(self, clips: Sequence[Clip], vocabulary: LabelVocabulary, missing: Sequence[SkippedClip] = (), description: dict | None = None):
        self._clips = list(clips)
        self.vocabulary = vocabulary
        self.missing: list[SkippedClip] = list(missing)
        self.notes: list[str] = []  # non-fatal findings worth a line in the ingest report
        self._description = description or {}

    @property
    def clips(self) -> list[Clip]:
        return self._clips

    def __len__(self) -> int:
        return len(self._clips)

    def __iter__(self) -> Iterator[Clip]:
        return iter(self._clips)

    def __getitem__(self, i: int) -> Clip:
        return self._clips[i]

    def describe(self) -> dict:
        return {"kind": self.kind, **self._description, "clips": len(self), "missing": len(self.missing)}

    def close(self) -> None:
        """Release open files (HDF5 packs); clips read afterwards open them again."""

    def __enter__(self) -> "ClipSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def fingerprint(self) -> str:
        """sha256 over the ordered (id, labels) list and the vocabulary: same inputs, same plan."""
        h = hashlib.sha256(self.vocabulary.fingerprint().encode())
        for c in self._clips:
            h.update(f"{c.id}\t{','.join(map(str, c.labels))}\n".encode())
        return h.hexdigest()



# ----------------------------------------------------------------------------------
# AudioSet segment CSVs
# ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Segment:
    ytid: str
    start: float  # seconds into the YouTube video
    end: float
    mids: tuple[str, ...]


@dataclass
class SegmentsCsv:
    path: Path
    segments: list[Segment]
    header: dict[str, int]  # the counts the "# num_ytids=..., num_segs=..." line announces

    @property
    def num_positive_labels(self) -> int:
        return sum(len(s.mids) for s in self.segments)


def read_segments_csv(path: str | os.PathLike) -> SegmentsCsv:
    """Parse an official AudioSet segment CSV (``#`` header lines, ``", "`` separators).

    Raises ValueError naming the line for malformed rows.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"segment CSV not found: {path}") from None
    segments: list[Segment] = []
    header: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if line.startswith("#"):
            header.update({k: int(v) for k, v in _SEGMENT_HEADER_STATS.findall(line)})
            continue
        # The label list is the one quoted field; csv handles the quotes and the ", " separators.
        row = next(csv.reader([line], skipinitialspace=True))
        if len(row) != 4:
            raise ValueError(f"{path}, line {lineno}: expected 4 fields (YTID, start, end, labels), found {len(row)}")
        ytid, start, end, labels = (c.strip() for c in row)
        if not YTID_RE.match(ytid):
            raise ValueError(f"{path}, line {lineno}: {ytid!r} is not a YouTube id (11 characters of A-Z a-z 0-9 _ -)")
        try:
            s, e = float(start), float(end)
        except ValueError:
            raise ValueError(f"{path}, line {lineno}: start/end {start!r}, {end!r} are not numbers") from None
        mids = tuple(m.strip() for m in labels.split(",") if m.strip())
        segments.append(Segment(ytid, s, e, mids))
    if not segments:
        raise ValueError(f"{path}: no segments (is this an AudioSet segment CSV?)")
    return SegmentsCsv(path, segments, header)


def write_segments_csv(path: str | os.PathLike, segments: Sequence[Segment], created: str = "Sun Mar  5 10:54:31 2017") -> Path:
    """Write segments in the official layout (three ``#`` lines, ``", "`` separators)."""
    path = Path(path)
    unique = {m for s in segments for m in s.mids}
    lines = [
        f"# Segments csv created {created}",
        f"# num_ytids={len({s.ytid for s in segments})}, num_segs={len(segments)}, "
        f"num_unique_labels={len(unique)}, num_positive_labels={sum(len(s.mids) for s in segments)}",
        "# YTID, start_seconds, end_seconds, positive_labels",
    ]
    lines += [f'{s.ytid}, {s.start:.3f}, {s.end:.3f}, "{",".join(s.mids)}"' for s in segments]
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, "\n".join(lines) + "\n")


def _close(a: float, b: float) -> bool:
    return abs(a - b) < 0.0015


def match_segment_file(stem: str, segments_by_ytid: dict[str, Segment]) -> str | None:
    """The YTID a file stem belongs to under the AudioSet naming conventions, or None.

    Tries ``Y{YTID}``, ``{YTID}``, and ``[Y]{YTID}_{start}_{end}`` with seconds or
    milliseconds; a start/end pair must agree with the segment's own times. Stems are
    matched against the known segments, so YTIDs that themselves begin with 'Y' or
    contain '_' are resolved correctly.
    """
    if len(stem) == 11 and stem in segments_by_ytid:
        return stem
    if len(stem) == 12 and stem[0] == "Y" and stem[1:] in segments_by_ytid:
        return stem[1:]
    parts = stem.rsplit("_", 2)
    if len(parts) == 3:
        rest, a, b = parts
        try:
            start, end = float(a), float(b)
        except ValueError:
            return None
        for ytid in (rest, rest[1:] if rest.startswith("Y") else None):
            seg = segments_by_ytid.get(ytid) if ytid else None
            if seg is None:
                continue
            if (_close(start, seg.start) and _close(end, seg.end)) or (_close(start / 1000, seg.start) and _close(end / 1000, seg.end)):
                return ytid
    return None


def scan_audio_files(folder: str | os.PathLike, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> list[Path]:
    """Every audio file under ``folder`` (recursively, symlinks followed), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"audio folder not found: {folder}")
    exts = {e.lower() for e in extensions}
    out = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        for name in files:
            if os.path.splitext(name)[1].lower() in exts and not name.startswith("."):
                out.append(Path(root) / name)
    out.sort()
    return out


def read_manifest(path: str | os.PathLike, base: str | os.PathLike | None = None) -> dict[str, Path]:
    """A ``ytid,path`` (or ``id,path``) CSV -> {ytid: absolute path}; relative paths resolve against ``base``
    (default: the manifest's folder)."""
    path = Path(path)
    base = Path(base) if base is not None else path.parent
    out: dict[str, Path] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        id_col = cols.get("ytid") or cols.get("id")
        path_col = cols.get("path")
        if not id_col or not path_col:
            raise ValueError(f"{path}: a manifest needs the columns ytid,path (found {','.join(reader.fieldnames or [])})")
        for lineno, row in enumerate(reader, start=2):
            ytid, p = (row.get(id_col) or "").strip(), (row.get(path_col) or "").strip()
            if not ytid or not p:
                raise ValueError(f"{path}, line {lineno}: empty ytid or path")
            if ytid.startswith("Y") and len(ytid) == 12:
                ytid = ytid[1:]
            if ytid in out:
                raise ValueError(f"{path}, line {lineno}: {ytid} is listed twice")
            out[ytid] = (base / p) if not os.path.isabs(p) else Path(p)
    return out


class AudioSetSource(ClipSource):
    """An official AudioSet segment CSV plus the audio files a user holds for it."""

    kind = "audioset"

    def __init__(
        self,
        segments_csv: str | os.PathLike,
        audio_dir: str | os.PathLike | None = None,
        manifest: str | os.PathLike | None = None,
        vocabulary: LabelVocabulary | None = None,
        extensions: Sequence[str] = AUDIO_EXTENSIONS,
    ):
        if audio_dir is None and manifest is None:
            raise ValueError("an AudioSet source needs an audio folder or a manifest")
        vocab = vocabulary or audioset_vocabulary()
        parsed = read_segments_csv(segments_csv)
        self.segments_csv = parsed
        notes = []
        by_ytid: dict[str, Segment] = {}
        duplicates: list[SkippedClip] = []
        for s in parsed.segments:
            if s.ytid in by_ytid:
                duplicates.append(SkippedClip(s.ytid, "duplicate segment in the CSV (first occurrence kept)"))
            else:
                by_ytid[s.ytid] = s

        files: dict[str, str] = {}
        unmatched = 0
        if manifest is not None:
            listed = read_manifest(manifest, base=audio_dir)
            for ytid, p in listed.items():
                if ytid in by_ytid:
                    files[ytid] = str(p)
                else:
                    unmatched += 1
        else:
            ambiguous = 0
            for p in scan_audio_files(audio_dir, extensions):
                ytid = match_segment_file(p.stem, by_ytid)
                if ytid is None:
                    unmatched += 1
                elif ytid in files:
                    ambiguous += 1  # e.g. both Y{id}.wav and Y{id}.flac: the first in sorted order wins
                else:
                    files[ytid] = str(p)
            if ambiguous:
                notes.append(f"{ambiguous} segments have more than one audio file; the first by name was used")
        if unmatched:
            notes.append(f"{unmatched} audio files belong to no segment of {Path(segments_csv).name} and were ignored")

        unknown = Counter()
        clips, missing = [], []
        for ytid, s in by_ytid.items():
            idx = []
            for m in s.mids:
                if m in vocab._by_mid:
                    idx.append(vocab._by_mid[m])
                else:
                    unknown[m] += 1
            p = files.get(ytid)
            if p is None:
                missing.append(SkippedClip(ytid, "no audio file found for this segment"))
            elif manifest is not None and not os.path.isfile(p):
                missing.append(SkippedClip(ytid, f"the manifest lists {p}, which does not exist"))
            else:
                clips.append(Clip(ytid, tuple(sorted(set(idx))), len(vocab), path=p))
        if unknown:
            notes.append(f"{sum(unknown.values())} labels with {len(unknown)} MIDs outside the vocabulary were dropped (e.g. {next(iter(unknown))})")
        super().__init__(
            clips,
            vocab,
            duplicates + missing,
            {"segments_csv": str(Path(segments_csv).resolve()), "audio_dir": str(Path(audio_dir).resolve()) if audio_dir else None, "manifest": str(Path(manifest).resolve()) if manifest else None},
        )
        self.notes = notes
        self.unmatched_files = unmatched
        self.unknown_mids = dict(unknown)


# ----------------------------------------------------------------------------------
# PANNs HDF5 packs
# ----------------------------------------------------------------------------------
def clip_id_from_audio_name(name: str) -> str:
    """PANNs stores 'Y{YTID}.wav'; the project's clip id is the bare YTID when there is one."""
    stem = os.path.splitext(os.path.basename(name))[0]
    if len(stem) == 12 and stem[0] == "Y" and YTID_RE.match(stem[1:]):
        return stem[1:]
    return stem or name


def write_panns_hdf5(
    path: str | os.PathLike,
    audio_names: Sequence[str],
    waveforms: np.ndarray,
    targets: np.ndarray,
    sample_rate: int = 32000,
) -> Path:
    """Write a PANNs-style pack: audio_name (N,) bytes, waveform int16 (N, L), target bool (N, C).

    Float waveforms in [-1, 1] are converted to int16 (clipped)."""
    import h5py

    waveforms = np.asarray(waveforms)
    if waveforms.dtype != np.int16:
        waveforms = np.clip(np.round(np.asarray(waveforms, np.float64) * 32767.0), -32768, 32767).astype(np.int16)
    targets = np.asarray(targets).astype(bool)
    if not (len(audio_names) == len(waveforms) == len(targets)):
        raise ValueError(f"{len(audio_names)} names, {len(waveforms)} waveforms and {len(targets)} targets")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("audio_name", data=np.array([n.encode() for n in audio_names], dtype="S"))
        f.create_dataset("waveform", data=waveforms, dtype=np.int16)
        f.create_dataset("target", data=targets, dtype=bool)
        f.attrs["sample_rate"] = sample_rate
    return path


class PannsHdf5Source(ClipSource):
    """One or more PANNs-style HDF5 packs (rows read lazily, per worker process)."""

    kind = "panns_hdf5"

    def __init__(self, paths: Sequence[str | os.PathLike] | str | os.PathLike, vocabulary: LabelVocabulary | None = None, sample_rate: int | None = None):
        import h5py

        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        vocab = vocabulary or audioset_vocabulary()
        self._packs = Hdf5Packs()
        clips, dupes, seen = [], [], set()
        rates = set()
        for p in paths:
            p = str(Path(p).resolve())
            try:
                f = h5py.File(p, "r")
            except FileNotFoundError:
                raise FileNotFoundError(f"HDF5 pack not found: {p}") from None
            except OSError as e:
                raise ValueError(f"{p}: not a readable HDF5 file ({e})") from None
            with f:
                for key in ("audio_name", "waveform", "target"):
                    if key not in f:
                        raise ValueError(f"{p}: not a PANNs pack (no '{key}' dataset; expected audio_name, waveform, target)")
                names, wav, tgt = f["audio_name"], f["waveform"], f["target"]
                if wav.ndim != 2 or tgt.ndim != 2 or not (len(names) == wav.shape[0] == tgt.shape[0]):
                    raise ValueError(f"{p}: inconsistent shapes audio_name {names.shape}, waveform {wav.shape}, target {tgt.shape}")
                if tgt.shape[1] != len(vocab):
                    raise ValueError(f"{p}: target has {tgt.shape[1]} classes but the vocabulary has {len(vocab)}")
                rate = sample_rate or int(f.attrs.get("sample_rate", 32000))
                rates.add(rate)
                targets = np.asarray(tgt[()]).astype(bool)
                for row, raw in enumerate(names[()]):
                    cid = clip_id_from_audio_name(raw.decode() if isinstance(raw, bytes) else str(raw))
                    if cid in seen:
                        dupes.append(SkippedClip(cid, f"duplicate clip id (row {row} of {Path(p).name}; first occurrence kept)"))
                        continue
                    seen.add(cid)
                    labels = tuple(int(i) for i in np.flatnonzero(targets[row]))
                    clips.append(Clip(cid, labels, len(vocab), h5_path=p, h5_row=row, h5=self._packs, sample_rate=rate))
        super().__init__(clips, vocab, dupes, {"hdf5": [str(Path(p).resolve()) for p in paths], "sample_rate": sorted(rates)})

    def close(self) -> None:
        self._packs.close()


# ----------------------------------------------------------------------------------
# Custom datasets: folder + path,labels CSV
# ----------------------------------------------------------------------------------
CUSTOM_LABEL_SEPARATOR = ";"


def read_custom_csv(path: str | os.PathLike) -> list[tuple[str, list[str]]]:
    """``path,labels`` rows -> [(relative path, [label, ...])]; labels separated by ';'."""
    path = Path(path)
    rows = []
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"dataset CSV not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder; give the dataset's CSV (path,labels)") from None
    with f:
        reader = csv.DictReader(f)
        cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        if "path" not in cols or "labels" not in cols:
            raise ValueError(f"{path}: the header must be path,labels (found {','.join(reader.fieldnames or [])})")
        for lineno, row in enumerate(reader, start=2):
            p = (row.get(cols["path"]) or "").strip()
            if not p:
                raise ValueError(f"{path}, line {lineno}: empty path")
            labels = [x.strip() for x in (row.get(cols["labels"]) or "").split(CUSTOM_LABEL_SEPARATOR) if x.strip()]
            rows.append((p, labels))
    return rows


class CustomCsvSource(ClipSource):
    """Your own sounds: ``audio_dir`` (default: the CSV's folder) + CSV ``path,labels``.

    The vocabulary is ``vocabulary`` when given (a LabelVocabulary, or a label file:
    ``index,mid,display_name`` CSV or one label per line); else the sorted distinct labels
    of this CSV. Nothing is read from beside the CSV (a ``labels.csv`` the dataset ships is
    only used when passed as ``vocabulary``) and nothing is written into its folder: the
    vocabulary is kept by what consumes the source (the feature store's ``labels.csv``,
    the run folder). Labels are matched by MID or display name (ignoring case and spacing;
    AudioSet names and MIDs are one class). A label outside the vocabulary is counted in
    ``unknown_labels`` and noted, and its clips keep their other labels -- unless
    ``strict``, where it is an error.
    """

    kind = "custom_csv"

    def __init__(self, csv_path: str | os.PathLike, audio_dir: str | os.PathLike | None = None, vocabulary: LabelVocabulary | str | os.PathLike | None = None, strict: bool = False):
        csv_path = Path(csv_path)
        rows = read_custom_csv(csv_path)
        root = Path(audio_dir) if audio_dir is not None else csv_path.parent
        notes = []
        if isinstance(vocabulary, LabelVocabulary):
            vocab = vocabulary
        elif vocabulary is not None:
            vocab = LabelVocabulary.from_file(vocabulary)
        else:
            vocab = LabelVocabulary.from_labels(lab for _, labs in rows for lab in labs)
            notes.append(f"vocabulary of {len(vocab)} labels taken from {csv_path.name}")
        index = {lab: vocab.find(lab) for lab in {lab for _, labs in rows for lab in labs}}
        unknown = Counter(lab for _, labs in rows for lab in set(labs) if index[lab] is None)
        if unknown and len(unknown) == len(index):
            raise ValueError(f"{csv_path}: none of its {len(index)} labels is a class of the {len(vocab)}-class vocabulary (e.g. {sorted(unknown)[0]!r}); is it the right vocabulary?")
        if unknown and strict:
            shown = ", ".join(sorted(unknown)[:5]) + (" ..." if len(unknown) > 5 else "")
            raise ValueError(f"{csv_path}: {len(unknown)} labels are not in the {len(vocab)}-class vocabulary: {shown}")
        for lab, count in sorted(unknown.items()):
            notes.append(f"unknown label {lab!r} in {count} clips of {csv_path.name}: not in the {len(vocab)}-class vocabulary; those clips keep their other labels")
        clips, skipped, seen = [], [], set()
        for p, labs in rows:
            key = Path(p).as_posix()
            if key in seen:
                skipped.append(SkippedClip(key, "listed twice in the CSV (first occurrence kept)"))
                continue
            seen.add(key)
            full = Path(p) if os.path.isabs(p) else root / p
            if not full.is_file():
                skipped.append(SkippedClip(key, f"audio file not found: {full}"))
                continue
            clips.append(Clip(key, tuple(sorted({index[lab] for lab in labs if index[lab] is not None})), len(vocab), path=str(full)))
        super().__init__(clips, vocab, skipped, {"csv": str(csv_path.resolve()), "audio_dir": str(root.resolve())})
        self.notes = notes
        self.unknown_labels: dict[str, int] = dict(unknown)  # label -> clips that carry it
