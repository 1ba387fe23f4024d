"""Your own sounds: vocabularies owned by the data, on real WAV files and CSVs written here.

Train and eval CSVs with a label only in eval; a read-only dataset folder that ships
its own labels.csv (nothing read from it implicitly, nothing written into it);
AudioSet names vs MIDs vs a 527-class release; unknown labels reported, or refused
with --strict; custom classes keep an empty MID.
"""
from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path

import pytest
import timm
import torch

import audio_dcls.models  # noqa: F401  (registers the models)
from audio_dcls.checkpoint import save_release
from audio_dcls.labels import LabelVocabulary, audioset_vocabulary
from custom_sounds import write_dataset
from pipelines.evaluate import main as evaluate_main
from pipelines.feature_store import FeatureStore
from pipelines.precompute import main as precompute_main
from pipelines.sources import CustomCsvSource
from pipelines.train import run_vocabulary
from pipelines.train_config import load_config
from tiny_store import TINY_MODEL_ARGS, tiny_frontend

CLIP_S = str(tiny_frontend().clip_seconds)


def snapshot(folder: Path) -> dict:
    """Every file and folder under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in [folder, *folder.rglob("*")]}


def make_read_only(folder: Path) -> None:
    for p in [folder, *folder.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def make_writable(folder: Path) -> None:
    for p in [folder, *folder.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A read-only dataset folder shipping its own labels.csv (in a format of its own) and two
    CSVs; 'whoosh' only in eval. Restored to writable afterwards so pytest can clean up."""
    root = tmp_path_factory.mktemp("custom") / "my_sounds"
    csvs = write_dataset(root, {
        "train": [["knock-knock"], ["door creak"], ["knock-knock", "door creak"], ["door creak"], ["knock-knock"], ["Dog"]],
        "eval": [["knock-knock"], ["door creak", "whoosh"], ["whoosh"], ["Dog", "door creak"]],
    })
    (root / "labels.csv").write_text("path,labels\naudio/train_000.wav,knock-knock\n")  # the dataset's own file
    make_read_only(root)
    yield {"root": root, **csvs, "before": snapshot(root)}
    make_writable(root)


def test_one_vocabulary_for_train_and_eval_stores_nothing_written_into_the_dataset(dataset, tmp_path, capsys):
    out = tmp_path / "stores"
    argv = ["build", str(out), "--custom-csv", str(dataset["train"]), "--custom-csv", str(dataset["eval"]), "--clip-seconds", CLIP_S, "--workers", "1", "--no-progress"]
    assert precompute_main(argv) == 0
    tr, ev = FeatureStore(out / "train"), FeatureStore(out / "eval")
    # the sorted union of both CSVs' labels; Dog is AudioSet's (its MID), the others keep an empty MID
    expected = LabelVocabulary(["/m/0bt9lr", "", "", ""], ["Dog", "door creak", "knock-knock", "whoosh"])
    assert tr.vocabulary == ev.vocabulary == expected
    assert LabelVocabulary.from_csv(out / "train" / "labels.csv") == expected
    assert (out / "eval" / "labels.csv").read_text().splitlines()[2:] == ['1,,"door creak"', '2,,"knock-knock"', '3,,"whoosh"']
    assert tr.labels[:, 3].sum() == 0 and ev.labels[:, 3].sum() == 2  # whoosh: eval only, yet a class
    assert snapshot(dataset["root"]) == dataset["before"]  # nothing written or touched in the dataset's folder
    # a later split against an earlier store's vocabulary
    assert precompute_main(["build", str(tmp_path / "later"), "--custom-csv", str(dataset["eval"]), "--labels-from", str(out / "train"), "--clip-seconds", CLIP_S, "--workers", "1", "--no-progress"]) == 0
    assert FeatureStore(tmp_path / "later").vocabulary == expected
    # the shipped labels.csv is not a vocabulary file; it is read only when given, and then refused clearly
    assert precompute_main(["build", str(tmp_path / "x"), "--custom-csv", str(dataset["train"]), "--labels", str(dataset["root"] / "labels.csv"), "--workers", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("precompute: error:") and "\n" not in err


def test_unknown_labels_are_reported_one_line_each_or_refused_with_strict(dataset, tmp_path, capsys):
    (tmp_path / "labels.txt").write_text("knock-knock\ndoor creak\n")  # one label per line, in this order
    argv = ["build", str(tmp_path / "s"), "--custom-csv", str(dataset["eval"]), "--labels", str(tmp_path / "labels.txt"), "--clip-seconds", CLIP_S, "--workers", "1", "--no-progress"]
    assert precompute_main(argv) == 0
    out = capsys.readouterr().out
    assert "unknown label 'Dog' in 1 clips" in out and "unknown label 'whoosh' in 2 clips" in out
    store = FeatureStore(tmp_path / "s")
    assert store.vocabulary.display_names == ("knock-knock", "door creak")
    assert store.labels.tolist() == [[1, 0], [0, 1], [0, 0], [0, 1]]  # clips keep the labels they have
    assert precompute_main(["build", str(tmp_path / "strict"), *argv[2:], "--strict"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("precompute: error:") and "2 labels are not in the 2-class vocabulary: Dog, whoosh" in err and "\n" not in err


def test_training_vocabulary_precedence(dataset, tmp_path):
    cfg = load_config(None, [f"train=[{dataset['train']}]", f"eval={dataset['eval']}"])
    union = run_vocabulary(cfg, None, None)
    assert union.vocabulary.display_names == ("Dog", "door creak", "knock-knock", "whoosh") and "sorted union" in union.source
    (tmp_path / "l.txt").write_text("whoosh\nknock-knock\ndoor creak\nDog\nextra\n")
    given = run_vocabulary(load_config(None, [f"train=[{dataset['train']}]", f"labels={tmp_path / 'l.txt'}"]), None, None)
    assert given.vocabulary.display_names == ("whoosh", "knock-knock", "door creak", "Dog", "extra")
    # stores keep their own vocabulary
    assert run_vocabulary(load_config(None, ["train=[data/stores/x]"]), None, None) is None


def _release_527(folder: Path) -> Path:
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto_dcls_audio", num_classes=527, **TINY_MODEL_ARGS)
    v = audioset_vocabulary()
    return save_release(folder, model, "convnext_atto_dcls_audio", dict(TINY_MODEL_ARGS, num_classes=527), tiny_frontend(), list(zip(v.mids, v.display_names)), v.label_set)


def test_audioset_names_and_mids_score_against_a_527_class_release(tmp_path, capsys):
    release = _release_527(tmp_path / "as527")
    data = tmp_path / "data"
    # the same three AudioSet classes written as names (any case), MIDs and names again, plus a label AudioSet lacks
    csvs = write_dataset(data, {"names": [["Acoustic guitar"], ["dog"], ["Speech", "Dog"], ["acoustic_guitar", "my kazoo"], ["speech"]]})
    mids = [["/m/042v_gx"], ["/m/0bt9lr"], ["/m/09x0r", "/m/0bt9lr"], ["/m/042v_gx", "my kazoo"], ["/m/09x0r"]]
    csvs["mids"] = data / "mids.csv"  # the same files, labelled with MIDs
    csvs["mids"].write_text("path,labels\n" + "".join(f"audio/names_{i:03d}.wav,{';'.join(m)}\n" for i, m in enumerate(mids)))
    results = {}
    for kind in ("names", "mids"):
        out = tmp_path / f"eval_{kind}"
        assert evaluate_main([str(release), "--csv", str(csvs[kind]), "--out", str(out), "--workers", "0", "--device", "cpu"]) == 0
        printed = capsys.readouterr().out
        assert "unknown label 'my kazoo' (1 clips): not a class of the model; those clips are scored on their other labels" in printed
        summary = json.loads((out / "summary.json").read_text())
        assert summary["classes_scored_ap"] == 3 and summary["num_clips"] == 5 and summary["unknown_labels"] == {"my kazoo": 1}
        with open(out / "per_class.csv", newline="") as f:
            scored = {r["mid"]: (r["name"], r["positives"], r["AP"]) for r in csv.DictReader(f) if r["AP"]}
        assert set(scored) == {"/m/042v_gx", "/m/0bt9lr", "/m/09x0r"}  # reported with their MIDs
        results[kind] = summary["mAP"]
    assert results["names"] == pytest.approx(results["mids"], abs=1e-12)  # one class, however it is written
    assert evaluate_main([str(release), "--csv", str(csvs["names"]), "--out", str(tmp_path / "strict"), "--workers", "0", "--device", "cpu", "--strict"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("evaluate: error:") and "my kazoo" in err and "\n" not in err
    # a vocabulary built from names reads the MID-written CSV into the same classes
    by_name = CustomCsvSource(csvs["names"])
    by_mid = CustomCsvSource(csvs["mids"], vocabulary=by_name.vocabulary)
    assert [c.labels for c in by_name] == [c.labels for c in by_mid]
    assert by_name.vocabulary.mids == ("/m/042v_gx", "/m/0bt9lr", "/m/09x0r", "")


def test_evaluate_reads_a_custom_csv_into_the_releases_own_vocabulary(dataset, tmp_path, capsys):
    torch.manual_seed(1)
    labels = [("", "knock-knock"), ("", "door creak"), ("/m/0bt9lr", "Dog")]  # trained without 'whoosh'
    model = timm.create_model("convnext_atto_dcls_audio", num_classes=3, **TINY_MODEL_ARGS)
    release = save_release(tmp_path / "mine", model, "convnext_atto_dcls_audio", dict(TINY_MODEL_ARGS, num_classes=3), tiny_frontend(), labels, "custom")
    out = tmp_path / "ev"
    assert evaluate_main([str(release), "--csv", str(dataset["eval"]), "--out", str(out), "--workers", "0", "--device", "cpu"]) == 0
    assert "unknown label 'whoosh' (2 clips)" in capsys.readouterr().out
    with open(out / "per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["mid"], r["name"], r["positives"]) for r in rows] == [("", "knock-knock", "1"), ("", "door creak", "2"), ("/m/0bt9lr", "Dog", "1")]
    # --labels reads the CSV into another vocabulary, matched to the model's outputs class by class
    (tmp_path / "l.txt").write_text("door creak\nwhoosh\n")
    assert evaluate_main([str(release), "--csv", str(dataset["eval"]), "--labels", str(tmp_path / "l.txt"), "--out", str(tmp_path / "ev2"), "--workers", "0", "--device", "cpu"]) == 0
    summary = json.loads((tmp_path / "ev2" / "summary.json").read_text())
    assert summary["classes_scored_ap"] == 1 and summary["data_classes_not_predicted"] == 1
    assert snapshot(dataset["root"]) == dataset["before"]
    assert evaluate_main([str(release), "--store", str(tmp_path), "--labels", "x", "--out", str(tmp_path / "o")]) == 1
    assert "--labels and --strict apply to a path,labels --csv" in capsys.readouterr().err


def test_overrides_anywhere_and_help_config(capsys):
    from pipelines.train import main as train_main
    from pipelines.train_config import TrainConfig, field_comments

    assert train_main(["--print-config", "seed=3", "--no-progress", "lr=1e-3", "train=[x]"]) == 0
    printed = capsys.readouterr().out
    assert "seed: 3" in printed and "lr: 0.001" in printed
    assert train_main(["--help-config"]) == 0
    text = capsys.readouterr().out
    comments = field_comments()
    for name in TrainConfig.__dataclass_fields__:
        assert comments[name], f"{name} has no comment in TrainConfig"
        assert f"  {name}: " in text and comments[name] in text
    assert "  head_bias_init: float | 'auto' | null = null" in text and "  freeze: str = none" in text


@pytest.mark.parametrize("module", ["pipelines.train", "pipelines.evaluate", "pipelines.precompute", "pipelines.finetune"])
def test_a_bad_ops_setting_is_one_line_not_a_traceback(module):
    import subprocess
    import sys

    env = dict(os.environ, AUDIO_DCLS_DW_WGRAD="sideways")
    res = subprocess.run([sys.executable, "-m", module, "--help"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip() == "pipelines: error: AUDIO_DCLS_DW_WGRAD='sideways': expected one of auto, triton, fft"
