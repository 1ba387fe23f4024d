"""Label vocabularies: the 527 AudioSet classes, their ontology, and custom label sets.

A :class:`LabelVocabulary` is an ordered list of classes, each with an id (the
AudioSet MID such as ``/m/09x0r``, or for a custom dataset the label string itself)
and a display name. Model output ``i`` means row ``i``. It reads and writes the
``index,mid,display_name`` CSV that AudioSet ships as ``class_labels_indices.csv``;
feature stores, checkpoints and release folders carry one as ``labels.csv``.

The AudioSet vocabulary is the shipped copy of ``class_labels_indices.csv`` (md5
68c0b5c199d6cc789852b144cc3ab500, the file every AudioSet tagger uses);
:class:`AudioSetOntology` reads the shipped ``ontology.json`` for parents/ancestors.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from audio_dcls.io import atomic_write

DATA_DIR = Path(__file__).resolve().parent / "data"
AUDIOSET_LABELS_CSV = DATA_DIR / "class_labels_indices.csv"
AUDIOSET_ONTOLOGY_JSON = DATA_DIR / "ontology.json"
AUDIOSET_NUM_CLASSES = 527
AUDIOSET_LABEL_SET = f"audioset-{AUDIOSET_NUM_CLASSES}"  # the label-set name releases and model cfgs carry
LABELS_CSV_HEADER = ("index", "mid", "display_name")


class LabelVocabulary:
    """An ordered, immutable set of classes: index <-> id (MID) <-> display name.

    ``LabelVocabulary(["dog", "cat"])`` makes a custom vocabulary whose ids are its
    names. Lookups by id or by display name are both supported; ids win when a
    string is both.
    """

    def __init__(self, mids: Sequence[str], display_names: Sequence[str] | None = None):
        mids = [str(m) for m in mids]
        names = [str(n) for n in display_names] if display_names is not None else list(mids)
        if len(names) != len(mids):
            raise ValueError(f"{len(mids)} label ids but {len(names)} display names")
        if not mids:
            raise ValueError("a label vocabulary needs at least one class")
        for m in mids:
            if not m.strip() or m != m.strip():
                raise ValueError(f"invalid label id {m!r}: empty or surrounded by spaces")
        seen: dict[str, int] = {}
        for i, m in enumerate(mids):
            if m in seen:
                raise ValueError(f"label id {m!r} appears twice (rows {seen[m]} and {i})")
            seen[m] = i
        self._mids = tuple(mids)
        self._names = tuple(names)
        self._by_mid = seen
        by_name: dict[str, int] = {}
        for i, n in enumerate(names):
            by_name.setdefault(n, i)
        self._by_name = by_name

    # --- basic access -------------------------------------------------------------
    @property
    def mids(self) -> tuple[str, ...]:
        return self._mids

    @property
    def display_names(self) -> tuple[str, ...]:
        return self._names

    def __len__(self) -> int:
        return len(self._mids)

    @property
    def num_classes(self) -> int:
        return len(self._mids)

    def __iter__(self):
        return iter(self._mids)

    def __contains__(self, key: object) -> bool:
        return key in self._by_mid or key in self._by_name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelVocabulary) and self._mids == other._mids and self._names == other._names

    def __hash__(self) -> int:
        return hash((self._mids, self._names))

    def __repr__(self) -> str:
        head = ", ".join(self._names[:3])
        return f"LabelVocabulary({len(self)} classes: {head}{', ...' if len(self) > 3 else ''})"

    def index(self, key: str) -> int:
        """Row of a class given its id (MID) or display name; KeyError if unknown."""
        if key in self._by_mid:
            return self._by_mid[key]
        if key in self._by_name:
            return self._by_name[key]
        raise KeyError(f"unknown label {key!r} (not an id or display name of this {len(self)}-class vocabulary)")

    def mid(self, index: int) -> str:
        return self._mids[index]

    def display_name(self, index: int) -> str:
        return self._names[index]

    # --- multi-hot encoding -------------------------------------------------------
    def encode(self, labels: Iterable[str], strict: bool = True) -> np.ndarray:
        """Ids or display names -> (C,) float32 multi-hot. strict=False skips unknown labels."""
        y = np.zeros(len(self), dtype=np.float32)
        for lab in labels:
            try:
                y[self.index(lab)] = 1.0
            except KeyError:
                if strict:
                    raise
        return y

    def decode(self, target, threshold: float = 0.5) -> list[str]:
        """(C,) scores/multi-hot -> ids of the classes at or above ``threshold``."""
        t = np.asarray(target).reshape(-1)
        if t.shape[0] != len(self):
            raise ValueError(f"expected {len(self)} values, got {t.shape[0]}")
        return [self._mids[i] for i in np.flatnonzero(t >= threshold)]

    # --- persistence --------------------------------------------------------------
    def to_csv_text(self) -> str:
        """The CSV in AudioSet's own style (display names always quoted), so the 527-class
        vocabulary writes back byte-identical to class_labels_indices.csv."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        lines = [",".join(LABELS_CSV_HEADER)]
        for i, (m, n) in enumerate(zip(self._mids, self._names)):
            buf.seek(0)
            buf.truncate()
            w.writerow([m])
            quoted_name = '"' + n.replace('"', '""') + '"'
            lines.append(f"{i},{buf.getvalue().rstrip(chr(10))},{quoted_name}")
        return "\n".join(lines) + "\n"

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write ``index,mid,display_name`` (atomically and durably)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, self.to_csv_text())

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> "LabelVocabulary":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise FileNotFoundError(f"label file not found: {path}") from None
        return cls.from_csv_text(text, source=str(path))

    @classmethod
    def from_csv_text(cls, text: str, source: str = "labels csv") -> "LabelVocabulary":
        rows = list(csv.reader(io.StringIO(text)))
        rows = [r for r in rows if r and any(c.strip() for c in r)]
        if not rows:
            raise ValueError(f"{source}: empty label file")
        header = tuple(c.strip() for c in rows[0])
        if header != LABELS_CSV_HEADER:
            raise ValueError(f"{source}: header must be {','.join(LABELS_CSV_HEADER)}, found {','.join(header)}")
        mids, names = [], []
        for line, r in enumerate(rows[1:], start=2):
            if len(r) != 3:
                raise ValueError(f"{source}, line {line}: expected 3 fields (index,mid,display_name), found {len(r)}")
            try:
                idx = int(r[0])
            except ValueError:
                raise ValueError(f"{source}, line {line}: index {r[0]!r} is not an integer") from None
            if idx != len(mids):
                raise ValueError(f"{source}, line {line}: index {idx} out of order (expected {len(mids)})")
            mids.append(r[1].strip())
            names.append(r[2])
        try:
            return cls(mids, names)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    def to_dict(self) -> dict:
        return {"mids": list(self._mids), "display_names": list(self._names)}

    @classmethod
    def from_dict(cls, d: dict) -> "LabelVocabulary":
        return cls(d["mids"], d.get("display_names"))

    def fingerprint(self) -> str:
        """sha256 of the CSV form: equal fingerprints mean interchangeable outputs."""
        return hashlib.sha256(self.to_csv_text().encode("utf-8")).hexdigest()

    @property
    def is_audioset(self) -> bool:
        return self == audioset_vocabulary()

    @property
    def label_set(self) -> str:
        """The name releases record: ``audioset-527``, or ``custom-C:<fingerprint prefix>``."""
        return AUDIOSET_LABEL_SET if self.is_audioset else f"custom-{len(self)}:{self.fingerprint()[:12]}"

    @classmethod
    def from_labels(cls, labels: Iterable[str]) -> "LabelVocabulary":
        """A custom vocabulary of the distinct labels, sorted (stable across runs)."""
        distinct = sorted({lab.strip() for lab in labels if lab.strip()})
        return cls(distinct)


@functools.lru_cache(maxsize=1)
def audioset_vocabulary() -> LabelVocabulary:
    """The 527 AudioSet classes in the official order."""
    vocab = LabelVocabulary.from_csv(AUDIOSET_LABELS_CSV)
    if len(vocab) != AUDIOSET_NUM_CLASSES:
        raise RuntimeError(f"{AUDIOSET_LABELS_CSV} has {len(vocab)} classes, expected {AUDIOSET_NUM_CLASSES}")
    return vocab


class AudioSetOntology:
    """The AudioSet ontology graph (632 nodes; a class may have several parents)."""

    def __init__(self, path: str | os.PathLike = AUDIOSET_ONTOLOGY_JSON):
        with open(path, encoding="utf-8") as f:
            nodes = json.load(f)
        self.nodes: dict[str, dict] = {n["id"]: n for n in nodes}
        parents: dict[str, list[str]] = {mid: [] for mid in self.nodes}
        for n in nodes:
            for c in n.get("child_ids", []):
                if c in parents and n["id"] not in parents[c]:
                    parents[c].append(n["id"])
        self._parents = {k: tuple(v) for k, v in parents.items()}

    def __contains__(self, mid: object) -> bool:
        return mid in self.nodes

    def name(self, mid: str) -> str:
        return self._node(mid)["name"]

    def _node(self, mid: str) -> dict:
        try:
            return self.nodes[mid]
        except KeyError:
            raise KeyError(f"{mid!r} is not in the AudioSet ontology") from None

    def parents(self, mid: str) -> tuple[str, ...]:
        self._node(mid)
        return self._parents[mid]

    def ancestors(self, mid: str) -> list[str]:
        """Every node above ``mid`` (parents first, breadth-first, no repeats)."""
        self._node(mid)
        out: list[str] = []
        seen = {mid}
        frontier = list(self._parents[mid])
        while frontier:
            nxt = []
            for p in frontier:
                if p not in seen:
                    seen.add(p)
                    out.append(p)
                    nxt.extend(self._parents[p])
            frontier = nxt
        return out


@functools.lru_cache(maxsize=1)
def audioset_ontology() -> AudioSetOntology:
    return AudioSetOntology()
