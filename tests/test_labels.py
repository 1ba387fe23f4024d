"""audio_dcls.labels: the AudioSet vocabulary and ontology, custom vocabularies, labels.csv I/O."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from audio_dcls.labels import (
    AUDIOSET_LABEL_SET,
    AUDIOSET_LABELS_CSV,
    AUDIOSET_ONTOLOGY_JSON,
    LabelVocabulary,
    audioset_ontology,
    audioset_vocabulary,
    resolve_audioset_label,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "audioset"


def test_shipped_labels_are_the_official_file():
    assert hashlib.md5(AUDIOSET_LABELS_CSV.read_bytes()).hexdigest() == "68c0b5c199d6cc789852b144cc3ab500"
    if (SHARED / "class_labels_indices.csv").exists():
        assert AUDIOSET_LABELS_CSV.read_bytes() == (SHARED / "class_labels_indices.csv").read_bytes()
        assert AUDIOSET_ONTOLOGY_JSON.read_bytes() == (SHARED / "ontology.json").read_bytes()


def test_audioset_vocabulary_lookups():
    v = audioset_vocabulary()
    assert len(v) == v.num_classes == 527 and v.is_audioset
    assert (v.mid(0), v.display_name(0)) == ("/m/09x0r", "Speech")
    # display names with commas survive the CSV quoting
    i = v.index("/m/05zppz")
    assert i == 1 and v.display_name(i) == "Male speech, man speaking"
    assert v.index("Male speech, man speaking") == 1
    assert v.index("Dial tone") == 393 and v.mid(393) == "/m/015jpf"
    assert v.display_name(v.index("/m/015jpf")) == "Dial tone"
    assert v.label_set == AUDIOSET_LABEL_SET == "audioset-527"
    assert sum("," in n for n in v.display_names) == 75
    with pytest.raises(KeyError, match="unknown label"):
        v.index("/m/nope")


def test_encode_decode_multi_hot():
    v = audioset_vocabulary()
    y = v.encode(["/m/09x0r", "Dial tone"])
    assert y.dtype == np.float32 and y.shape == (527,) and y.sum() == 2 and y[0] == y[393] == 1
    assert v.decode(y) == ["/m/09x0r", "/m/015jpf"]
    with pytest.raises(KeyError):
        v.encode(["not a label"])
    assert v.encode(["not a label", "Speech"], strict=False).sum() == 1


def test_ontology_ancestors():
    o = audioset_ontology()
    v = audioset_vocabulary()
    assert len(o.nodes) == 632 and all(m in o for m in v.mids)
    assert [o.name(a) for a in o.ancestors("/m/015jpf")] == ["Telephone", "Alarm", "Sounds of things"]  # Dial tone
    assert [o.name(a) for a in o.ancestors("/m/05zppz")] == ["Speech", "Human voice", "Human sounds"]
    assert o.ancestors("/m/0dgw9r") == []  # "Human sounds" is a root
    assert o.parents("/m/015jpf") == ("/m/07cx4",)
    # a node with two parents has both (and their ancestors) once each
    multi = [mid for mid in v.mids if len(o.parents(mid)) > 1]
    assert multi
    anc = o.ancestors(multi[0])
    assert len(anc) == len(set(anc)) and set(o.parents(multi[0])) <= set(anc)


def test_custom_vocabulary_round_trips_through_labels_csv(tmp_path):
    v = LabelVocabulary(["dog", "cat", 'door "slam", loud'], ["Dog", "Cat", "Door, slam"])
    path = v.to_csv(tmp_path / "labels.csv")
    text = path.read_text()
    assert text.splitlines()[0] == "index,mid,display_name"
    w = LabelVocabulary.from_csv(path)
    assert w == v and w.index("Door, slam") == 2 and w.index('door "slam", loud') == 2
    assert w.fingerprint() == v.fingerprint() and not w.is_audioset
    assert w.label_set == f"custom-3:{v.fingerprint()[:12]}"
    assert LabelVocabulary.from_dict(v.to_dict()) == v
    # the AudioSet file is itself a labels.csv; writing it back reproduces it byte for byte
    assert hashlib.md5(audioset_vocabulary().to_csv_text().encode()).hexdigest() == "68c0b5c199d6cc789852b144cc3ab500"


def test_from_labels_is_sorted_and_custom_labels_have_no_mid():
    v = LabelVocabulary.from_labels(["b", "a", " c ", "a", ""])
    assert v.mids == ("", "", "") and v.display_names == ("a", "b", "c") and v.keys == ("a", "b", "c")
    assert LabelVocabulary(["a", "b", "c"]) == v  # names only: labels, not MIDs
    assert v.decode([1, 0, 1]) == ["a", "c"]
    assert v.to_csv_text().splitlines()[1] == '0,,"a"'  # the mid column stays empty
    assert LabelVocabulary.from_csv_text(v.to_csv_text()) == v


def test_audioset_labels_are_recognised_by_mid_or_name():
    # exact name, MID, case/spacing/underscores ignored -- one class, with its MID and official name
    for written in ("Acoustic guitar", "/m/042v_gx", "acoustic guitar", "ACOUSTIC_GUITAR", "  Acoustic   guitar "):
        assert resolve_audioset_label(written) == ("/m/042v_gx", "Acoustic guitar"), written
    assert resolve_audioset_label("Human sounds") == ("/m/0dgw9r", "Human sounds")  # an ontology node outside the 527
    assert resolve_audioset_label("my doorbell") is None
    v = LabelVocabulary.from_labels(["Dog", "/m/0bt9lr", "dog", "my doorbell", "Speech"])
    assert list(zip(v.mids, v.display_names)) == [("/m/0bt9lr", "Dog"), ("/m/09x0r", "Speech"), ("", "my doorbell")]
    a = audioset_vocabulary()
    assert a.index("dog") == a.index("/m/0bt9lr") == 74 and a.find("my doorbell") is None
    # a label file of one label per line keeps its order
    assert LabelVocabulary.from_labels(["zeta", "Dog", "alpha"], sort=False).display_names == ("zeta", "Dog", "alpha")


def test_vocabularies_meet_by_mid_else_by_name():
    model = LabelVocabulary(["/m/0bt9lr", "", ""], ["Dog", "my doorbell", "Kettle whistle"])
    data = LabelVocabulary(["", "/m/0bt9lr", "", "/m/09x0r"], ["Kettle  whistle", "Doggo (renamed)", "lawnmower", "Speech"])
    assert model.match(data) == [2, 0, None, None]
    # two different MIDs never meet by name
    assert LabelVocabulary(["/m/a"], ["Same"]).match(LabelVocabulary(["/m/b"], ["Same"])) == [None]


def test_label_files_in_either_format(tmp_path):
    (tmp_path / "one_per_line.txt").write_text("Squeak\nmy doorbell\n\n/m/0bt9lr\nDomestic animals, pets\n")
    v = LabelVocabulary.from_file(tmp_path / "one_per_line.txt")
    assert list(zip(v.mids, v.display_names)) == [("/m/07q6cd_", "Squeak"), ("", "my doorbell"), ("/m/0bt9lr", "Dog"), ("/m/068hy", "Domestic animals, pets")]
    v.to_csv(tmp_path / "labels.csv")
    assert LabelVocabulary.from_file(tmp_path / "labels.csv") == v
    (tmp_path / "twice.txt").write_text("a\nb\na\n")
    with pytest.raises(ValueError, match="'a' is listed twice"):
        LabelVocabulary.from_file(tmp_path / "twice.txt")


@pytest.mark.parametrize(
    "text,message",
    [
        ("idx,mid,name\n0,a,A\n", "header must be"),
        ("index,mid,display_name\n1,a,A\n", "out of order"),
        ("index,mid,display_name\n0,a,A\n1,a,B\n", "appears twice"),
        ("index,mid,display_name\n0,a\n", "expected 3 fields"),
        ("index,mid,display_name\nx,a,A\n", "not an integer"),
        ("", "empty label file"),
    ],
)
def test_bad_label_files_are_rejected_with_the_reason(tmp_path, text, message):
    p = tmp_path / "labels.csv"
    p.write_text(text)
    with pytest.raises(ValueError, match=message):
        LabelVocabulary.from_csv(p)


def test_missing_label_file():
    with pytest.raises(FileNotFoundError, match="label file not found"):
        LabelVocabulary.from_csv("/nonexistent/labels.csv")
