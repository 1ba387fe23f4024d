"""Which label vocabulary a command uses for your own ``path,labels`` CSVs.

The vocabulary belongs to the data and is always explicit. In order of precedence:

1. ``--labels FILE`` (``labels=FILE`` in a training config): an ``index,mid,display_name``
   CSV or one label per line, in the order given;
2. the vocabulary of the release being evaluated -- or fine-tuned, when it names every
   label of the training data (its classifier is then kept whole);
3. the sorted union of the labels of every CSV given to the command (train and eval
   together), so an eval-only label is a class too.

AudioSet labels are recognised by MID or display name (``audio_dcls.labels``) and keep
their MID; other labels have an empty MID. The result is written into the feature store,
the run folder and the release -- never next to the user's CSV, and nothing is read from
there implicitly.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from audio_dcls.labels import LabelVocabulary
from pipelines.sources import read_custom_csv


@dataclass(frozen=True)
class VocabularyChoice:
    vocabulary: LabelVocabulary
    source: str  # where it came from, in one line (for logs and reports)

    def describe(self) -> str:
        mids = sum(1 for m in self.vocabulary.mids if m)
        return f"{len(self.vocabulary)} classes ({mids} AudioSet classes with their MID) from {self.source}"


def csv_labels(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Every label written in the ``path,labels`` CSVs (with repeats, in file order)."""
    return [lab for p in paths for _, labs in read_custom_csv(p) for lab in labs]


def uncovered(vocabulary: LabelVocabulary, labels: Iterable[str]) -> list[str]:
    """The distinct labels ``vocabulary`` has no class for, sorted."""
    return sorted({lab for lab in labels if vocabulary.find(lab) is None})


def choose_vocabulary(
    csvs: Sequence[str | os.PathLike],
    labels_file: Optional[str | os.PathLike] = None,
    release: Optional[LabelVocabulary] = None,
    release_name: str = "the release",
    release_must_cover: bool = False,
) -> VocabularyChoice:
    """The vocabulary for ``csvs`` by the precedence above. ``release``: the vocabulary of the
    model evaluated (always used) or fine-tuned (``release_must_cover``: used only when it
    has a class for every label of ``csvs``)."""
    if labels_file:
        return VocabularyChoice(LabelVocabulary.from_file(labels_file), f"--labels {labels_file}")
    labels = csv_labels(csvs)
    if release is not None and not (release_must_cover and uncovered(release, labels)):
        return VocabularyChoice(release, f"{release_name} (its own vocabulary)")
    if not labels:
        names = ", ".join(Path(p).name for p in csvs)
        raise ValueError(f"{names}: no labels to build a vocabulary from (every labels field is empty)")
    names = ", ".join(str(p) for p in csvs)
    return VocabularyChoice(LabelVocabulary.from_labels(labels), f"the sorted union of the labels of {names}")


def store_vocabulary(folder: str | os.PathLike) -> LabelVocabulary:
    """The vocabulary a finished feature store was built with (``--labels-from STORE``)."""
    from pipelines.feature_store import FeatureStore

    return FeatureStore(folder).vocabulary
