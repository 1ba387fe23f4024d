"""ONNX export of release folders (pipelines/export_onnx.py, audio_dcls/dft_logmel.py).

Oracles: the release's PyTorch model (prepared) and audio_dcls.features.LogMel
for the exported graphs; torch.fft.rfft for the DFT basis. One small release
(convnext_atto, 5 classes, BatchNorm statistics and tap positions off their
init) is exported once per form and shared; the dynamo exporter takes seconds
per export, so the tests reuse the files rather than export per test.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx  # onnx, onnxscript and onnxruntime: onnx and test extras
import onnxruntime as ort
import pytest
import timm
import torch
from torch import nn

import audio_dcls  # noqa: F401  (registers the models)
from audio_dcls.checkpoint import load_release, save_release
from audio_dcls.dft_logmel import DftLogMel, dft_basis
from audio_dcls.features import LogMel, LogMelConfig
from audio_dcls.models import dcls_stage_layers, prepare_for_inference
from pipelines import export_onnx as exp

ROOT = Path(__file__).resolve().parents[1]
ARCH = "convnext_atto_dcls_audio"
LABELS = [("/m/09x0r", "Speech"), ("/m/0ytgt", "Child speech, kid speaking"), ("/t/dd00001", "Café chatter"),
          ("/m/04rlf", "Music"), ("/m/028v0c", "Silence")]

pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def _trained_like_release(folder: Path) -> Path:
    torch.manual_seed(0)
    model = timm.create_model(ARCH, num_classes=len(LABELS), ls_init_value=1.0)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    for layers in dcls_stage_layers(model):
        layers[0].P.copy_((torch.rand(layers[0].P.shape, generator=g) * 2 - 1) * 11)
        layers[0].SIG.copy_(torch.rand(layers[0].SIG.shape, generator=g))
    model.eval()
    # Logits of unit spread on real-looking log-mels, so absolute tolerances mean something.
    spread = model(LogMel()(torch.randn(2, 64000, generator=g) * 0.1)).std()
    model.head.fc.weight.div_(spread)
    model.head.fc.bias.div_(spread)
    return save_release(folder, model, ARCH, {"num_classes": len(LABELS), "ls_init_value": 1.0}, LogMelConfig(), LABELS, "test-vocabulary",
                        training={"epochs": 1, "eval": {"mAP": 0.25}})


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    return _trained_like_release(tmp_path_factory.mktemp("releases") / "atto-test")


@pytest.fixture(scope="module")
def reference(release_dir):
    """The release's model, prepared, and the front end it was trained with."""
    release = load_release(release_dir)
    return prepare_for_inference(release.model), LogMel(release.frontend).eval()


@pytest.fixture(scope="module")
def exported(release_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    return {
        "logmel": exp.export_onnx(release_dir, out / "model.onnx"),
        "waveform": exp.export_onnx(release_dir, out / "nested" / "tagger.onnx", with_frontend=True),
    }


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _audio(batch: int, samples: int, seed: int) -> torch.Tensor:
    """Tones over quiet noise, a different pitch and level per clip."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 32000.0
    rows = [a * torch.sin(2 * torch.pi * f * t) + 0.01 * torch.randn(samples, generator=g)
            for a, f in zip(np.linspace(0.1, 0.6, batch), np.linspace(220, 3000, batch))]
    return torch.stack(rows)


def test_dft_basis_is_the_windowed_rfft():
    cfg = LogMelConfig(n_fft=64, win_length=48, hop_length=16)
    frame = torch.randn(64, dtype=torch.float64)
    window = torch.zeros(64, dtype=torch.float64)
    window[8:56] = torch.hann_window(48, dtype=torch.float64)  # centred, as torch.stft places it
    want = torch.fft.rfft(frame * window)[3:20]
    basis = torch.from_numpy(dft_basis(cfg, 3, 20))  # (2 * 17, 64)
    got = basis @ frame
    torch.testing.assert_close(got[:17], want.real, atol=1e-12, rtol=0)
    torch.testing.assert_close(got[17:], want.imag, atol=1e-12, rtol=0)


@pytest.mark.parametrize("cfg", [LogMelConfig(), LogMelConfig(sample_rate=16000, n_fft=512, win_length=400, hop_length=160, n_mels=64, f_min=0.0, f_max=8000.0)])
def test_dft_logmel_equals_logmel(cfg):
    x = _audio(2, cfg.sample_rate * 2 + 77, seed=3)
    with torch.no_grad():
        want, got = LogMel(cfg)(x), DftLogMel(cfg)(x)
    assert got.shape == want.shape == (2, 1, cfg.n_mels, x.shape[1] // cfg.hop_length + 1)
    torch.testing.assert_close(got, want, atol=5e-4, rtol=0)  # measured 1.8e-4 (tones over noise, 1024 points)


def test_model_only_export_matches_pytorch_for_any_batch_and_length(exported, reference):
    report, (model, _) = exported["logmel"], reference
    assert report.max_abs_diff <= 1e-4 and report.check_shape == (3, 1, 128, 1001)
    session = _session(report.path)
    g = torch.Generator().manual_seed(7)
    for shape in [(1, 1, 128, 1001), (3, 1, 128, 1001), (3, 1, 128, 500)]:
        x = torch.randn(*shape, generator=g)
        with torch.no_grad():
            want = model(x).numpy()
        got = session.run(["logits"], {"logmel": x.numpy()})[0]
        assert got.shape == (shape[0], len(LABELS))
        assert np.abs(want).max() > 0.5
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_waveform_export_matches_logmel_and_model(exported, reference):
    report, (model, logmel) = exported["waveform"], reference
    assert report.max_abs_diff <= 1e-3 and report.check_shape == (3, 320000)
    session = _session(report.path)
    for batch, samples in [(1, 320000), (3, 320000), (3, 80000)]:
        x = _audio(batch, samples, seed=batch + samples)
        with torch.no_grad():
            want = model(logmel(x)).numpy()
        got = session.run(["logits"], {"waveform": x.numpy()})[0]
        assert got.shape == (batch, len(LABELS))
        assert np.abs(want).max() > 0.5
        np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)


@pytest.mark.parametrize("form", ["logmel", "waveform"])
def test_exported_file_describes_itself(exported, release_dir, form):
    report = exported[form]
    model = onnx.load(str(report.path))
    (inp,), (out,) = model.graph.input, model.graph.output
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert inp.name == form and out.name == "logits"
    assert dims(inp) == (["batch", 1, 128, "frames"] if form == "logmel" else ["batch", "samples"])
    assert dims(out) == ["batch", len(LABELS)]
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {exp.DEFAULT_OPSET}
    ops = {n.op_type for n in model.graph.node}
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"} and not ops & {"STFT", "DFT"}

    meta = _session(report.path).get_modelmeta().custom_metadata_map
    labels = json.loads(meta["labels"])
    assert labels == [{"index": i, "mid": mid, "display_name": name} for i, (mid, name) in enumerate(LABELS)]
    assert meta["arch"] == ARCH and meta["release"] == "atto-test" and meta["label_source"] == "test-vocabulary"
    assert json.loads(meta["frontend"]) == LogMelConfig().to_dict()
    assert meta["sample_rate"] == "32000" and meta["clip_samples"] == "320000"
    assert json.loads(meta["with_frontend"]) is (form == "waveform")
    assert json.loads(meta["training"])["eval"] == {"mAP": 0.25}
    assert meta["input"].startswith(form + ":") and meta["output"].startswith("logits:")
    assert not list(report.path.parent.glob(".*.tmp"))  # the temporary sibling is gone


def test_cli_exports_and_prints_the_parity(release_dir, tmp_path):
    out = tmp_path / "cli.onnx"
    proc = subprocess.run([sys.executable, "-m", "pipelines.export_onnx", str(release_dir), "--out", str(out), "--opset", "20"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(s for s in proc.stdout.splitlines() if "max abs diff" in s)
    assert float(line.split("max abs diff ")[1].split()[0]) <= 1e-4
    assert "Traceback" not in proc.stderr
    assert {o.version for o in onnx.load(str(out)).opset_import if o.domain in ("", "ai.onnx")} == {20}


def test_cli_missing_release_is_one_line_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipelines.export_onnx", str(tmp_path / "nope"), "--out", str(tmp_path / "m.onnx")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"export_onnx: error: {tmp_path / 'nope'}: not a release folder (missing)"]
    assert not (tmp_path / "m.onnx").exists()


def _main_error(argv, capsys):
    rc = exp.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("export_onnx: error: "), err
    return err[0]


@pytest.mark.parametrize("opset", ["17", "99"])
def test_cli_rejects_unsupported_opsets(release_dir, tmp_path, capsys, opset):
    msg = _main_error([str(release_dir), "--out", str(tmp_path / "m.onnx"), "--opset", opset], capsys)
    assert f"--opset {opset} is not supported: choose {exp.MIN_OPSET}..{onnx.defs.onnx_opset_version()}" in msg
    assert list(tmp_path.iterdir()) == []


def test_cli_rejects_unwritable_out(release_dir, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    msg = _main_error([str(release_dir), "--out", str(tmp_path / "a_file" / "m.onnx")], capsys)
    assert f"cannot write --out {tmp_path / 'a_file' / 'm.onnx'}" in msg
    msg = _main_error([str(release_dir), "--out", str(tmp_path)], capsys)
    assert "is a folder" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_cli_names_the_missing_onnx_packages(release_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an environment without it gives on import
    msg = _main_error([str(release_dir), "--out", str(tmp_path / "m.onnx")], capsys)
    assert "onnxruntime is not installed" in msg and "pip install 'audio_dcls[onnx]'" in msg
    assert list(tmp_path.iterdir()) == []
