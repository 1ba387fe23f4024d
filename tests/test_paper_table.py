"""pipelines.paper_table on tiny real runs: two models x two seeds, plus an unfinished run."""
from __future__ import annotations

import json
import statistics

import pytest

from pipelines.paper_table import build_table, main
from pipelines.train import train
from pipelines.train_config import load_config
from tiny_store import make_tiny_store


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("table")
    tr = make_tiny_store(root / "train", n=32, seed=0)
    ev = make_tiny_store(root / "eval", n=16, seed=3)
    base = [
        "model_args={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}", "layer_scale_init=1.0", f"train=[{tr}]", f"eval={ev}",
        "epochs=1", "warmup_epochs=0.5", "batch_size=16", "effective_batch=16", "workers=0", "channels_last=false", "threads=1", "augment=none",
        f"output_dir={root}/runs/{{model}}-seed{{seed}}", "release=false",
    ]
    for model in ("convnext_atto_dcls_audio", "convnext_atto_audio"):
        for seed in (0, 1):
            train(load_config(None, base + [f"model={model}", f"seed={seed}"]), progress=False)
    # an interrupted run (max_steps before the end) must be left out
    train(load_config(None, base + ["model=convnext_atto_audio", "seed=2", "epochs=2", "max_steps=1"]), progress=False)
    return root / "runs"


def test_table_layout_and_numbers(runs):
    text = build_table([runs], device="cpu", batch_size=1, iters=1)
    lines = text.splitlines()
    assert lines[0] == "| Model | Method | Kernel size / count | # Params | Throughput (clips/s) | mAP (%) |"
    rows = [l for l in lines[2:] if l.startswith("| ")]
    assert len(rows) == 2
    dsc, dcls = rows  # DSC before DCLS, as in the paper
    for row, model, method, kernel in ((dsc, "convnext_atto_audio", "DSC (baseline)", "7² / 49"), (dcls, "convnext_atto_dcls_audio", "DCLS-Gauss", "23² / 26")):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == f"ConvNeXt-ATTO (`{model}`)" and cells[1] == method and cells[2] == kernel
        summaries = [json.loads((runs / f"{model}-seed{s}" / "summary.json").read_text()) for s in (0, 1)]
        maps = [s["eval"]["mAP"] * 100 for s in summaries]
        assert cells[3] == f"{summaries[0]['parameters'] / 1e6:.2f} M"
        assert float(cells[4].replace(",", "")) > 0
        assert cells[5] == f"{statistics.mean(maps):.2f} ± {statistics.stdev(maps):.2f} (2 seeds: 0,1)"
    assert "convnext_atto_audio-seed2: run not finished, left out" in text


def test_cli_writes_markdown_and_rejects_empty(runs, tmp_path, capsys):
    out = tmp_path / "table.md"
    assert main([str(runs), "--out", str(out), "--no-throughput"]) == 0
    assert "| — |" in out.read_text() and "not measured" in out.read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("paper_table: error: no finished run folder") and "\n" not in err
