"""pipelines.embed: clip (and window) embeddings of an audio folder, a CSV or a feature store.

The oracle for audio is audio_dcls.Tagger on the same files (the service's path);
for a store, the released model's forward_head(pre_logits=True) on each stored
log-mel. torchrun with two gloo processes must write what one process writes.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import timm
import torch

import audio_dcls.models  # noqa: F401  (registers the models)
from audio_dcls import Tagger
from audio_dcls.checkpoint import load_release, save_release
from audio_dcls.features import LogMelConfig
from audio_dcls.labels import audioset_vocabulary
from pipelines.embed import main
from pipelines.feature_store import FeatureStore
from tiny_store import make_tiny_store, make_tiny_waveform_store

REPO = Path(__file__).resolve().parents[1]
ARGS = dict(dims=[16, 32, 64, 128], depths=[1, 1, 1, 1])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    torch.manual_seed(5)
    vocab = audioset_vocabulary()
    model = timm.create_model("convnext_atto_dcls_audio", **ARGS)
    release = save_release(root / "tiny-embed", model, "convnext_atto_dcls_audio", dict(ARGS, num_classes=527), LogMelConfig(), list(zip(vocab.mids, vocab.display_names)), "audioset-527", {})
    audio = root / "sounds"
    (audio / "birds").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, seconds, sr in (("long.wav", 21.0, 22050), ("birds/chirp.flac", 3.0, 48000), ("ten.wav", 10.0, 32000)):
        t = np.arange(int(seconds * sr)) / sr
        sf.write(audio / name, (0.3 * np.sin(2 * np.pi * 500 * (1 + seconds / 10) * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32), sr)
    (audio / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    store = make_tiny_store(root / "store", n=10, classes=4, frontend=LogMelConfig(clip_seconds=(128 - 1) * 320 / 32000))
    waves = make_tiny_waveform_store(root / "waves", n=6, classes=4)
    return {"root": root, "release": release, "audio": audio, "store": store, "waves": waves}


def run(*args) -> int:
    return main([str(a) for a in args] + ["--device", "cpu"])


def test_audio_folder_matches_the_tagger_and_reports_the_broken_file(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(setup["release"], "--audio-dir", setup["audio"], "--out", out, "--windows", "--scores", "--workers", "1", "--batch-size", "3") == 0
    assert "3 clips embedded (128 numbers each), 1 skipped" in capsys.readouterr().out
    ids = (out / "ids.txt").read_text().splitlines()
    assert ids == ["birds/chirp.flac", "long.wav", "ten.wav"]  # sorted paths under --audio-dir; the broken one left out
    with open(out / "skipped.csv", newline="") as f:
        skipped = list(csv.DictReader(f))
    assert [r["id"] for r in skipped] == ["broken.wav"] and skipped[0]["reason"].startswith("undecodable:")
    embeddings, scores, windows = (np.load(out / f"{n}.npy") for n in ("embeddings", "scores", "windows"))
    assert embeddings.shape == (3, 128) and embeddings.dtype == np.float32 and scores.shape == (3, 527)
    with open(out / "window_index.csv", newline="") as f:
        index = list(csv.DictReader(f))
    assert windows.shape == (len(index), 128) == (1 + 4 + 1, 128)  # 3 s: one padded window; 21 s: 0, 5, 10, 11 s; 10 s: one

    tagger = Tagger(setup["release"], device="cpu")
    for row, clip_id in enumerate(ids):
        w = tagger.tag_windows(setup["audio"] / clip_id)
        s, e = tagger.tag(setup["audio"] / clip_id)
        np.testing.assert_allclose(embeddings[row], e, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(scores[row], s, atol=1e-6)
        mine = [r for r in index if r["id"] == clip_id]
        assert [int(r["clip"]) for r in mine] == [row] * w.plan.num_windows
        np.testing.assert_allclose([float(r["start_s"]) for r in mine], w.start_s, atol=1e-6)
        np.testing.assert_allclose([float(r["end_s"]) for r in mine], w.end_s, atol=1e-6)
        np.testing.assert_allclose(windows[[int(r["row"]) for r in mine]], w.embeddings, atol=1e-5, rtol=1e-5)
    long_rows = [r for r in index if r["id"] == "long.wav"]
    assert [(float(r["start_s"]), float(r["end_s"])) for r in long_rows] == [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0), (11.0, 21.0)]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips_listed"] == 4 and summary["clips_embedded"] == 3 and summary["clips_skipped"] == 1
    assert summary["model"]["embedding_dim"] == 128 and summary["windows"] == {"window_s": 10.0, "hop_s": 5.0, "per_window": True}

    # The same files again, other batch size, no workers: the same vectors.
    again = tmp_path / "again"
    assert run(setup["release"], "--audio-dir", setup["audio"], "--out", again, "--workers", "0", "--batch-size", "1") == 0
    np.testing.assert_allclose(np.load(again / "embeddings.npy"), embeddings, atol=1e-5, rtol=1e-5)
    assert not (again / "windows.npy").exists() and not (again / "scores.npy").exists()


def test_a_file_cut_short_is_embedded_and_its_warning_reported(setup, tmp_path, capsys):
    folder = tmp_path / "sounds"
    folder.mkdir()
    samples = (0.2 * np.sin(np.arange(32000 * 3) / 7)).astype(np.float32)
    sf.write(folder / "whole.wav", samples, 32000, subtype="PCM_16")
    whole = (folder / "whole.wav").read_bytes()
    (folder / "cut.wav").write_bytes(whole[:-1000])  # its data chunk still announces every sample
    out = tmp_path / "out"
    assert run(setup["release"], "--audio-dir", folder, "--out", out, "--workers", "0") == 0
    assert "2 clips embedded (128 numbers each), 0 skipped, 1 embedded with decode warnings" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    declared = len(samples) * 2
    expected = f"truncated: the header announces {declared:,} bytes of audio but only {declared - 1000:,} are present"
    assert summary["clips_with_warnings"] == 1 and summary["decode_warnings"] == [["cut.wav", expected]]
    assert (out / "ids.txt").read_text().splitlines() == ["cut.wav", "whole.wav"]


def test_csv_with_a_missing_file(setup, tmp_path):
    listing = tmp_path / "set.csv"
    with open(listing, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "labels"])
        w.writerows([("ten.wav", "dog"), ("gone.wav", "cat"), ("birds/chirp.flac", "bird")])
    out = tmp_path / "out"
    assert run(setup["release"], "--csv", listing, "--audio-dir", setup["audio"], "--out", out, "--workers", "0") == 0
    assert (out / "ids.txt").read_text().splitlines() == ["ten.wav", "birds/chirp.flac"]
    with open(out / "skipped.csv", newline="") as f:
        skipped = list(csv.DictReader(f))
    assert [r["id"] for r in skipped] == ["gone.wav"] and "not found" in skipped[0]["reason"]
    folder = tmp_path / "folder"
    assert run(setup["release"], "--audio-dir", setup["audio"], "--out", folder, "--workers", "0") == 0
    by_id = dict(zip((folder / "ids.txt").read_text().splitlines(), np.load(folder / "embeddings.npy")))
    np.testing.assert_allclose(np.load(out / "embeddings.npy"), [by_id["ten.wav"], by_id["birds/chirp.flac"]], atol=1e-6)


def test_feature_store_matches_the_model_on_each_stored_log_mel(setup, tmp_path):
    out = tmp_path / "out"
    assert run(setup["release"], "--store", setup["store"], "--out", out, "--workers", "0", "--batch-size", "4") == 0
    store = FeatureStore(setup["store"])
    assert (out / "ids.txt").read_text().splitlines() == list(store.ids)
    model = load_release(setup["release"]).model  # as trained, not folded: an independent path
    with torch.no_grad():
        x = torch.stack([store[i][0] for i in range(len(store))]).float()
        expected = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    np.testing.assert_allclose(np.load(out / "embeddings.npy"), expected, atol=2e-5, rtol=1e-4)
    assert json.loads((out / "summary.json").read_text())["windows"] is None


def test_waveform_store_goes_through_the_release_front_end(setup, tmp_path):
    from audio_dcls.features import LogMel

    out = tmp_path / "out"
    assert run(setup["release"], "--store", setup["waves"], "--out", out, "--workers", "0", "--batch-size", "4") == 0
    store = FeatureStore(setup["waves"])
    model = load_release(setup["release"]).model
    with torch.no_grad():
        x = LogMel(LogMelConfig())(torch.stack([store[i][0] for i in range(len(store))]).float() / 32768)  # int16 / 2**15, the front end
        expected = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    np.testing.assert_allclose(np.load(out / "embeddings.npy"), expected, atol=2e-5, rtol=1e-4)
    assert json.loads((out / "summary.json").read_text())["data"]["store_kind"] == "waveform"


def test_torchrun_two_processes_write_what_one_writes(setup, tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    common = [str(setup["release"]), "--audio-dir", str(setup["audio"]), "--windows", "--workers", "0", "--device", "cpu", "--threads", "1"]
    assert main(common + ["--out", str(single)]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pipelines.embed", *common, "--out", str(ddp)]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (ddp / "ids.txt").read_text() == (single / "ids.txt").read_text()
    assert (ddp / "skipped.csv").read_text() == (single / "skipped.csv").read_text()
    assert (ddp / "window_index.csv").read_text() == (single / "window_index.csv").read_text()
    for name in ("embeddings.npy", "windows.npy"):
        np.testing.assert_allclose(np.load(ddp / name), np.load(single / name), atol=1e-5, rtol=1e-5)  # other batches: float rounding only


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}", "--audio-dir", "{audio}"], "no such release folder"),
        (["{release}", "--store", "{store}", "--audio-dir", "{audio}"], "give --store, or --csv"),
        (["{release}"], "nothing to embed"),
        (["{release}", "--store", "{store}", "--windows"], "--windows needs audio"),
        (["{release}", "--audio-dir", "{empty}"], "no audio files"),
        (["{release}", "--audio-dir", "{missing}"], "audio folder not found"),
        (["{release}", "--audio-dir", "{audio}", "--window-s", "4", "--hop-s", "5"], "--hop-s must be > 0 and at most --window-s"),
        (["{release}", "--audio-dir", "{audio}", "--device", "abacus"], "device 'abacus'"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(setup, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    fill = {"missing": str(tmp_path / "nothing"), "release": str(setup["release"]), "audio": str(setup["audio"]), "store": str(setup["store"]), "empty": str(tmp_path / "empty")}
    argv = [a.format(**fill) for a in args] + ["--out", str(tmp_path / "o"), "--workers", "0"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("embed: error:") and message in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()
