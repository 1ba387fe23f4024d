"""benchmarks/bench_gpu.py runs end to end on CPU with tiny shapes and writes its JSON.

The GPU numbers themselves come from a real H100 run (the script's docstring
has the command); here we check the script's plumbing: the stage shapes, the
per-layer table, the whole-model columns (stock DSC, our DSC, our DCLS, the
reference-DCLS swap) and the ratios.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_gpu  # noqa: E402


def test_stage_shapes_follow_the_stem_and_downsamplings():
    # 1×128×1001 through the (2, 16) stem, then three 2×2 stride-2 downsamplings.
    assert bench_gpu.convnext_stage_shapes() == [(96, 64, 62), (192, 32, 31), (384, 16, 15), (768, 8, 7)]


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_gpu")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--device", "cpu", "--tiny", "--profile", "--ab-fused-build", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads((out / "bench_gpu.json").read_text()), proc.stdout


def test_layer_table_and_ratios(smoke_report):
    report, stdout = smoke_report
    assert report["meta"]["tiny"] and report["meta"]["batch"] == 2
    assert "reproduce: python benchmarks/bench_gpu.py --device cpu --tiny --profile --ab-fused-build --out" in stdout
    assert list(report["layers"]) == ["nchw", "channels_last"]
    for layers in report["layers"].values():
        assert list(layers) == ["8@32x12", "16@16x6", "16@8x3", "32@4x1"]
        for row in layers.values():
            for name in ("stock_7x7", "stock_23x23", "ours_7x7", "ours_23x23", "ours_dcls_23x23"):
                assert row[name]["ms"] > 0, (name, row[name])
    for totals in report["layer_totals"].values():
        assert totals["ours_23x23_over_stock_7x7"] > 0
    assert "(channels_last), ours_23x23 / stock 7x7" in stdout


def test_model_columns(smoke_report):
    report, stdout = smoke_report
    assert list(report["models"]) == ["convnext_atto"], report["models"]  # --tiny: the one tiny family
    row = report["models"]["convnext_atto"]
    assert (row["dsc_model"], row["dcls_model"]) == ("convnext_atto_audio", "convnext_atto_dcls_audio")
    for column in ("stock_dsc", "ours_dsc", "ours_dcls", "ours_dcls_unfused"):  # the last: --ab-fused-build
        res = row[column]
        assert res.get("train_samples_per_s", 0) > 0 and res.get("infer_samples_per_s", 0) > 0, (column, res)
        prof = res["train_step_profile"]  # --profile: one step's host/device split and top operators
        assert prof["wall_ms"] > 0 and prof["aten_ops"] > 0 and len(prof["top_host_ops_ms"]) == 12, prof
    # The reference layers swapped in (dcls 0.1.1 is in the test extra); inference only on CPU (slow).
    oracle = row["oracle_dcls"]
    assert oracle.get("infer_samples_per_s", 0) > 0 and oracle["train"] == "skipped", oracle
    assert not report["meta"]["oracle"].startswith("skipped"), report["meta"]["oracle"]
    ratios = report["ratios"]["convnext_atto"]
    assert ratios["ours_dcls_over_stock_dsc_train"] > 0
    assert "ours dcls / stock dsc train" in stdout
