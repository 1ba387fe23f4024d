"""pipelines.evaluate: release folder or checkpoint, on a feature store or audio + CSV."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_dcls.checkpoint import load_release
from audio_dcls.metrics import tagging_metrics
from pipelines.evaluate import main
from pipelines.feature_store import FeatureStore
from pipelines.train import train
from pipelines.train_config import load_config
from tiny_store import make_tiny_store

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("eval")
    tr = make_tiny_store(root / "train", n=48, seed=0)
    ev = make_tiny_store(root / "eval", n=24, seed=5)
    run = root / "run"
    cfg = load_config(None, [
        "model=convnext_atto_dcls_audio", "model_args={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}", "layer_scale_init=1.0",
        f"train=[{tr}]", "epochs=1", "warmup_epochs=0.2", "lr=2e-3", "batch_size=8", "effective_batch=8", "workers=0",
        "channels_last=false", "threads=1", "augment=none", f"output_dir={run}",
    ])
    summary = train(cfg, progress=False)
    return {"release": Path(summary["release"]), "checkpoint": run / "last.pt", "eval": ev, "root": root}


def test_release_on_store_writes_csv_json_and_plots(trained, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(trained["release"]), "--store", str(trained["eval"]), "--out", str(out), "--device", "cpu", "--workers", "0", "--batch-size", "5"]) == 0
    printed = capsys.readouterr().out
    assert "over 4/4 classes with positives" in printed
    summary = json.loads((out / "summary.json").read_text())
    # the same numbers as scoring the store by hand with the released model
    store = FeatureStore(trained["eval"])
    model = load_release(trained["release"]).model
    with torch.no_grad():
        scores = torch.sigmoid(model(torch.stack([store[i][0] for i in range(len(store))]))).numpy()
    ref = tagging_metrics(store.labels, scores)
    assert summary["mAP"] == pytest.approx(ref.mAP, abs=1e-6)
    assert summary["mAUC"] == pytest.approx(ref.mAUC, abs=1e-6)
    assert summary["d_prime"] == pytest.approx(ref.d_prime, abs=1e-5)
    assert summary["mean_class_d_prime"] == pytest.approx(ref.mean_class_d_prime, abs=1e-5)
    assert summary["classes_scored_ap"] == 4 and summary["num_clips"] == 24 and summary["clips_skipped"] == 0
    with open(out / "per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["index", "mid", "name", "positives", "AP", "AUC"]
    assert [r["name"] for r in rows] == [f"tiny class {i}" for i in range(4)]
    assert [int(r["positives"]) for r in rows] == store.labels.sum(0).tolist()
    assert np.allclose([float(r["AP"]) for r in rows], ref.ap, atol=1e-6)
    for png in ("ap_per_class.png", "dcls_positions.png"):
        data = (out / png).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000


def _write_audio_set(folder: Path):
    """Six short clips labelled with classes 0/1 only (the last cut short), plus one undecodable file."""
    folder.mkdir()
    sr = 32000
    t = np.arange(int(1.27 * sr)) / sr
    rows = []
    for i in range(6):
        x = (0.1 * np.sin(2 * np.pi * (300 + 500 * i) * t)).astype(np.float32)
        sf.write(folder / f"clip{i}.wav", x, sr, subtype="PCM_16")
        rows.append((f"clip{i}.wav", "/t/tiny0" if i % 2 else "/t/tiny0;/t/tiny1"))
    cut = folder / "clip5.wav"
    cut.write_bytes(cut.read_bytes()[:-100])  # its header announces 100 bytes more than there are: scored, with a warning
    (folder / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    rows.append(("bad.wav", "/t/tiny1"))
    with open(folder / "set.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "labels"])
        w.writerows(rows)
    return folder / "set.csv"


def test_checkpoint_on_audio_folder_with_a_bad_file(trained, tmp_path, capsys):
    csv_path = _write_audio_set(tmp_path / "audio")
    out = tmp_path / "out"
    assert main([str(trained["checkpoint"]), "--csv", str(csv_path), "--out", str(out), "--device", "cpu", "--workers", "0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["weights"] == "raw"
    assert summary["num_clips"] == 6 and summary["clips_skipped"] == 1
    assert summary["skipped"][0][0] == "bad.wav" and "undecodable" in summary["skipped"][0][1]
    assert summary["clips_with_warnings"] == 1
    [(clip, warning)] = summary["decode_warnings"]
    announced = int(1.27 * 32000) * 2  # 16-bit mono samples
    assert clip == "clip5.wav" and warning == f"truncated: the header announces {announced:,} bytes of audio but only {announced - 100:,} are present"
    # only two of the model's four classes occur: they are scored, the others are counted out
    assert summary["classes_scored_ap"] == 2 and summary["classes_without_positives"] == 2
    printed = capsys.readouterr().out
    assert "over 2/4 classes with positives" in printed and "1 scored with decode warnings" in printed


@pytest.mark.parametrize("args, message", [
    (["{missing}", "--store", "{eval}"], "no such release folder or checkpoint"),
    (["{release}", "--store", "{eval}", "--csv", "x.csv"], "exactly one of --store, --csv or --hdf5"),
    (["{release}", "--store", "{missing}"], "no such feature store"),
    (["{checkpoint}", "--store", "{eval}", "--weights", "ema"], "kept no EMA weights"),
])
def test_bad_input_is_one_line_and_nonzero(trained, tmp_path, capsys, args, message):
    fill = {"missing": str(tmp_path / "nothing"), "eval": str(trained["eval"]), "release": str(trained["release"]), "checkpoint": str(trained["checkpoint"])}
    argv = [a.format(**fill) for a in args] + ["--out", str(tmp_path / "o"), "--workers", "0"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("evaluate: error:") and message in err and "\n" not in err
