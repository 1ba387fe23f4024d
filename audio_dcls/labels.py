"""Label vocabularies: the 527 AudioSet classes, their ontology, and custom label sets.

A :class:`LabelVocabulary` is an ordered list of classes, each with a MID (the
AudioSet ontology id such as ``/m/09x0r``; empty for a class that is not an AudioSet
class) and a display name. Model output ``i`` means row ``i``. It reads and writes the
``index,mid,display_name`` CSV that AudioSet ships as ``class_labels_indices.csv``;
feature stores, checkpoints and release folders carry one as ``labels.csv``.

A label written by a user is recognised as an AudioSet class by its MID or its
display name -- exactly, then ignoring case, spaces and underscores -- with the
names of the whole ontology (:func:`resolve_audioset_label`), so ``"Acoustic
guitar"``, ``"acoustic_guitar"`` and ``"/m/042v_gx"`` are one class. Two
vocabularies meet class by class (:meth:`LabelVocabulary.match`): by MID where both
have one, else by display name.

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
import re
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
_LOOSE = re.compile(r"[\s_]+")


def normalize_label(text: str) -> str:
    """The form labels are compared in when exact spelling fails: case, spaces and underscores ignored."""
    return _LOOSE.sub("", str(text).casefold())


def _is_mid(text: str) -> bool:
    """AudioSet/Freebase ids look like '/m/09x0r', '/t/dd00001' or '/g/122z_qxw'."""
    return text.startswith("/")


class LabelVocabulary:
    """An ordered, immutable set of classes: index <-> MID <-> display name.

    ``LabelVocabulary(mids, display_names)``; a class that is not an AudioSet class has
    an empty MID and is known by its display name. ``LabelVocabulary(["dog", "cat"])``
    (names only) makes such a custom vocabulary: a "MID" that is not an ontology id
    (does not start with '/') and equals its display name is a label, not a MID, and is
    kept empty. Lookups take a MID or a display name, exactly or ignoring case and
    spacing (:func:`normalize_label`) when that is unambiguous.
    """

    def __init__(self, mids: Sequence[str], display_names: Sequence[str] | None = None):
        mids = [str(m) for m in mids]
        names = [str(n) for n in display_names] if display_names is not None else list(mids)
        if len(names) != len(mids):
            raise ValueError(f"{len(mids)} label ids but {len(names)} display names")
        if not mids:
            raise ValueError("a label vocabulary needs at least one class")
        mids = ["" if (m == n and not _is_mid(m)) else m for m, n in zip(mids, names)]
        for m, n in zip(mids, names):
            if m != m.strip():
                raise ValueError(f"invalid label id {m!r}: surrounded by spaces")
            if not n.strip() and not m:
                raise ValueError("a class needs a MID or a display name (found a row with neither)")
        seen: dict[str, int] = {}
        for i, key in enumerate(m or n for m, n in zip(mids, names)):
            if key in seen:
                raise ValueError(f"label id {key!r} appears twice (rows {seen[key]} and {i})")
            seen[key] = i
        self._mids = tuple(mids)
        self._names = tuple(names)
        self._by_mid = {m: i for i, m in enumerate(mids) if m}
        by_name: dict[str, int] = {}
        loose: dict[str, list[int]] = {}
        for i, n in enumerate(names):
            by_name.setdefault(n, i)
            loose.setdefault(normalize_label(n), []).append(i)
        self._by_name = by_name
        self._by_loose = {k: v[0] for k, v in loose.items() if len(v) == 1}

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
        return isinstance(key, str) and self.find(key) is not None

    @property
    def keys(self) -> tuple[str, ...]:
        """What identifies each class: its MID, or its display name when it has none."""
        return tuple(m or n for m, n in zip(self._mids, self._names))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelVocabulary) and self._mids == other._mids and self._names == other._names

    def __hash__(self) -> int:
        return hash((self._mids, self._names))

    def __repr__(self) -> str:
        head = ", ".join(self._names[:3])
        return f"LabelVocabulary({len(self)} classes: {head}{', ...' if len(self) > 3 else ''})"

    def find(self, key: str) -> int | None:
        """Row of a class given its MID or display name (exact first, then ignoring case and
        spacing; an AudioSet label also by the ontology's MID for it), or None."""
        key = str(key).strip()
        for table, k in ((self._by_mid, key), (self._by_name, key), (self._by_loose, normalize_label(key))):
            if k in table:
                return table[k]
        resolved = resolve_audioset_label(key) if self._by_mid else None
        if resolved is not None:
            return self._by_mid.get(resolved[0])
        return None

    def index(self, key: str) -> int:
        """Row of a class given its MID or display name; KeyError if unknown."""
        i = self.find(key)
        if i is None:
            raise KeyError(f"unknown label {key!r} (not a MID or display name of this {len(self)}-class vocabulary)")
        return i

    def match(self, other: "LabelVocabulary") -> list[int | None]:
        """For each class of ``other``, its row in this vocabulary (None where there is none):
        by MID where both classes have one, else by display name (ignoring case and spacing)."""
        out: list[int | None] = []
        for m, n in zip(other.mids, other.display_names):
            if m and m in self._by_mid:
                out.append(self._by_mid[m])
                continue
            i = self._by_name.get(n, self._by_loose.get(normalize_label(n)))
            out.append(i if i is not None and not (m and self._mids[i]) else None)
        return out

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
        """(C,) scores/multi-hot -> keys (MID, else display name) of the classes at or above ``threshold``."""
        t = np.asarray(target).reshape(-1)
        if t.shape[0] != len(self):
            raise ValueError(f"expected {len(self)} values, got {t.shape[0]}")
        keys = self.keys
        return [keys[i] for i in np.flatnonzero(t >= threshold)]

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
            mid_field = buf.getvalue().rstrip(chr(10)) if m else ""  # csv quotes a lone empty field
            lines.append(f"{i},{mid_field},{quoted_name}")
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
    def from_file(cls, path: str | os.PathLike) -> "LabelVocabulary":
        """A vocabulary file a user gives: the ``index,mid,display_name`` CSV (by its header), or
        one label per line (MIDs or names, in the file's order; AudioSet classes get their MID)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise FileNotFoundError(f"label file not found: {path}") from None
        except IsADirectoryError:
            raise ValueError(f"{path} is a folder, not a label file") from None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"{path}: empty label file")
        header = tuple(c.strip().lower() for c in lines[0].split(","))
        if header == LABELS_CSV_HEADER:
            return cls.from_csv_text(text, source=str(path))
        if header == ("path", "labels"):
            raise ValueError(f"{path} is a dataset CSV (path,labels), not a label file (index,mid,display_name, or one label per line)")
        if len(set(lines)) != len(lines):
            twice = next(x for x in lines if lines.count(x) > 1)
            raise ValueError(f"{path}: label {twice!r} is listed twice")
        try:
            return cls.from_labels(lines, sort=False)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

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
    def from_labels(cls, labels: Iterable[str], sort: bool = True) -> "LabelVocabulary":
        """The vocabulary of the distinct labels a dataset uses. AudioSet classes (by MID or
        name, see :func:`resolve_audioset_label`) get their MID and official name; others keep
        the label as their name and an empty MID. Sorted by display name (stable across runs)
        unless ``sort=False`` (the order of first appearance, e.g. a label file's)."""
        classes: dict[str, tuple[str, str]] = {}
        for lab in labels:
            lab = str(lab).strip()
            if not lab:
                continue
            mid, name = resolve_audioset_label(lab) or ("", lab)
            classes.setdefault(mid or name, (mid, name))
        rows = sorted(classes.values(), key=lambda mn: (mn[1], mn[0])) if sort else list(classes.values())
        if not rows:
            raise ValueError("no labels to build a vocabulary from")
        return cls([m for m, _ in rows], [n for _, n in rows])


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


@functools.lru_cache(maxsize=1)
def _audioset_label_index() -> tuple[dict, dict, dict]:
    """(MID -> name, exact name -> MID, loose name -> MID) over every ontology node."""
    nodes = audioset_ontology().nodes
    by_mid = {mid: n["name"] for mid, n in nodes.items()}
    by_name = {n["name"]: mid for mid, n in nodes.items()}
    by_loose = {normalize_label(n["name"]): mid for mid, n in nodes.items()}
    return by_mid, by_name, by_loose


def resolve_audioset_label(label: str) -> tuple[str, str] | None:
    """(MID, official display name) of an AudioSet ontology class given as its MID or its name
    (exactly, then ignoring case, spaces and underscores); None for any other label."""
    label = str(label).strip()
    by_mid, by_name, by_loose = _audioset_label_index()
    mid = label if label in by_mid else by_name.get(label) or by_loose.get(normalize_label(label))
    return (mid, by_mid[mid]) if mid else None
