"""pipelines.train: config, schedule, mixup, sampler, DDP = 1 process, exact resume
after SIGKILL -- both on log-mel stores and on waveform stores with the paper's
augmentation on the training device --, non-finite loss, and the release folder round trip."""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from audio_dcls.augment import mixup, smooth_labels
from audio_dcls.labels import LabelVocabulary
from pipelines.checkpoints import read_checkpoint
from pipelines.optim import WarmupCosine, build_optimizer
from pipelines.sampling import GlobalBatchSampler
from pipelines.train import main, train
from pipelines.train_config import ConfigError, load_config
from pipelines.train_state import build_training_model
from tiny_store import TINY_MODEL_ARGS, make_tiny_store, make_tiny_waveform_store, tiny_frontend

REPO = Path(__file__).resolve().parent.parent
TINY = [
    "model=convnext_atto_dcls_audio",
    "model_args={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}",
    "drop_path=0.1",  # random per sample: DDP equality and resume must reproduce it
    "augment=none",  # the log-mel stores below; the waveform runs set augment=dcls_audio
    "layer_scale_init=1.0",
    "workers=0",
    "warmup_epochs=0.5",
    "lr=2e-3",
    "batch_size=8",
    "channels_last=false",
    "threads=1",
    "log_every=1",
]


def _env():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _steps(run: Path):
    with open(run / "steps.csv", newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


# The two data paths: fp16 log-mel stores (no augmentation), and int16 waveform stores
# with the paper's augmentation + front end on the training device.
DATA_PATHS = {"logmel": ("", "augment=none"), "waveform": ("wave_", "augment=dcls_audio")}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    return {
        "train96": make_tiny_store(root / "train96", n=96, seed=0),
        "train64": make_tiny_store(root / "train64", n=64, seed=1),
        "eval": make_tiny_store(root / "eval", n=32, seed=2),
        "wave_train96": make_tiny_waveform_store(root / "wave_train96", n=96, seed=0),
        "wave_train64": make_tiny_waveform_store(root / "wave_train64", n=64, seed=1),
        "wave_eval": make_tiny_waveform_store(root / "wave_eval", n=32, seed=2),
    }


def _data_args(stores, kind: str, train: str):
    prefix, augment = DATA_PATHS[kind]
    return [f"train=[{stores[prefix + train]}]", f"eval={stores[prefix + 'eval']}", augment]


# ----------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------
def test_config_yaml_overrides_and_types(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: convnext_atto_dcls_audio\nlr: 4.0e-3\nepochs: 3\nwarmup_epochs: 1\ntrain: [a]\nmodel_args: {dims: [8, 16, 32, 64]}\n")
    cfg = load_config(recipe, ["lr=1e-3", "seed=2", "train=b", "model_args.depths=[1,1,1,1]", "eval=", "betas=[0.9, 0.95]"])
    assert cfg.lr == pytest.approx(1e-3) and isinstance(cfg.lr, float)  # '1e-3' is a string to YAML 1.1
    assert cfg.epochs == 3 and cfg.seed == 2 and cfg.train == ["b"] and cfg.eval == ""
    assert cfg.model_args == {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]}
    assert cfg.betas == [0.9, 0.95]
    assert cfg.resolved_output_dir() == Path("runs/convnext_atto_dcls_audio-seed2")
    # releases are named by the run, {model}-{dataset}-seed{seed}, never just by the architecture
    assert cfg.resolved_release_dir() == Path("runs/convnext_atto_dcls_audio-seed2/release/convnext_atto_dcls_audio-b-seed2")
    assert load_config(recipe, ["train=[data/stores/audioset/balanced_train,data/stores/audioset/unbalanced_train]"]).resolved_name() == "convnext_atto_dcls_audio-audioset-seed0"
    assert load_config(recipe, ["train=my_sounds/train.csv"]).resolved_name() == "convnext_atto_dcls_audio-my_sounds-seed0"
    named = load_config(recipe, ["name=tagger-{seed}", "output_dir=runs/{name}", "seed=3"])
    assert named.resolved_release_dir() == Path("runs/tagger-3/release/tagger-3")
    assert load_config(recipe, ["head_bias_init=auto", "freeze=stages:2"]).head_bias_init == "auto"
    for bad, msg in [
        (["lrr=1"], "unknown config key 'lrr' (did you mean 'lr'?)"),
        (["epochs=1.5"], "epochs: expected an integer"),
        (["channels_last=maybe"], "channels_last: expected true or false"),
        (["lr=fast"], "lr: expected a number"),
        (["opt=sgd"], "opt must be 'adamw' or 'lamb'"),
        (["effective_batch=8", "batch_size=16"], "effective_batch (8) must be >= batch_size (16)"),
        (["output_dir=runs/{nope}"], "cannot fill in"),
        (["seed"], "must look like key=value"),
        (["head_bias_init=high"], "head_bias_init: expected float | 'auto' | null, got 'high'"),
        (["freeze=stage:2"], "freeze must be none, backbone or stages:N"),
        (["name=my tagger"], "name 'my tagger': a release name is"),
        (["head_lr_scale=0"], "head_lr_scale and backbone_lr_scale must be > 0"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_config(recipe, bad)
        assert msg in str(e.value)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_cli_bad_input_is_one_line_and_nonzero(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train: [x]\n")
    assert main(["-c", str(recipe), "warmup_epochz=3"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "train: error: unknown config key 'warmup_epochz' (did you mean 'warmup_epochs'?)"
    assert main(["-c", str(recipe), f"output_dir={tmp_path / 'run'}"]) == 1  # 'x' is no feature store
    err = capsys.readouterr().err.strip()
    assert err.startswith("train: error: x:") and "\n" not in err
    # the shipped recipes all load (the fine-tuning recipe names no data: pipelines.finetune gives it)
    for recipe in sorted((REPO / "configs").glob("*.yaml")):
        load_config(recipe, [] if "train" in yaml.safe_load(recipe.read_text()) else ["train=[x]"])


def test_augment_key_its_old_form_and_the_data_it_needs(tmp_path, stores, capsys):
    from pipelines.train_config import config_from_dict

    assert load_config(None, ["train=x"]).augment == "dcls_audio"  # the paper's recipe is the default
    assert load_config(None, ["train=x", "specaugment=true"]).augment == "specaugment"  # recipes written before augment
    assert load_config(None, ["train=x", "specaugment=false"]).augment == "none"
    old = load_config(None, ["train=x", "augment=none"]).to_dict()
    del old["augment"]
    old["specaugment"] = False
    assert config_from_dict(old).augment == "none"  # a checkpoint saved before augment resumes with what it did
    for bad, msg in [
        (["augment=mixup"], "augment must be one of dcls_audio, specaugment, none"),
        (["specaugment=true", "augment=none"], "give augment only; specaugment is its old form"),
        (["specaugment=3"], "specaugment: expected true or false"),
        (["augment=none", "augment_args={speed_p: 0.3}"], "augment_args are given but augment=none"),
        (["long_clips=all"], "long_clips must be one of first, random_crop, windows"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(msg)):
            load_config(None, ["train=x", *bad])
    # a log-mel store with the waveform augmentation: one line naming the fix, before any model is built
    args = TINY + [f"train=[{stores['train64']}]", "augment=dcls_audio", "epochs=1", "effective_batch=8", f"output_dir={tmp_path / 'run'}"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("train: error: augment=dcls_audio") and "\n" not in err
    assert f"but train={stores['train64']} holds log-mels" in err and "--kind waveform" in err and "augment=none" in err
    assert main(TINY + [f"train=[{stores['wave_train64']}]", "augment=dcls_audio", "augment_args={speed_pp: 1}", "epochs=1", "effective_batch=8", f"output_dir={tmp_path / 'run2'}"]) == 1
    assert "augment_args: unknown augmentation settings: ['speed_pp']" in capsys.readouterr().err


# ----------------------------------------------------------------------------------
# schedule, optimizer groups, mixup, label smoothing, sampler
# ----------------------------------------------------------------------------------
def test_warmup_cosine_honours_lr_scale():
    cfg = load_config(None, TINY + ["train=x", "lr=4e-3", "min_lr=1e-6", "warmup_lr=1e-6", "weight_decay=0.05"])
    model = build_training_model(cfg, 5)
    opt = build_optimizer(model, cfg)
    groups = {g["group"]: g for g in opt.param_groups}
    assert set(groups) == {"decay", "no_decay", "positions"}
    assert groups["positions"]["weight_decay"] == 0 and groups["no_decay"]["weight_decay"] == 0 and groups["decay"]["weight_decay"] == 0.05
    sched = WarmupCosine(opt, cfg.lr, cfg.min_lr, cfg.warmup_lr, warmup_steps=10, total_steps=110)
    for t, base in [(0, 1e-6), (5, 1e-6 + (4e-3 - 1e-6) / 2), (10, 4e-3), (60, 1e-6 + (4e-3 - 1e-6) / 2), (110, 1e-6), (200, 1e-6)]:
        sched.step_update(t)
        assert groups["decay"]["lr"] == pytest.approx(base, rel=1e-9)
        assert groups["no_decay"]["lr"] == pytest.approx(base, rel=1e-9)
        assert groups["positions"]["lr"] == pytest.approx(5 * base, rel=1e-9)  # x5, not x25


def test_label_smoothing_and_mixup_by_hand():
    y = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    s = smooth_labels(y, 0.1)
    assert torch.allclose(s, 0.9 * y + 0.1 / 4)
    x = torch.arange(2 * 3, dtype=torch.float32).view(2, 1, 1, 3)
    xm, ym = mixup(x, s, 0.7)
    assert torch.allclose(xm[0], 0.7 * x[0] + 0.3 * x[1]) and torch.allclose(xm[1], 0.7 * x[1] + 0.3 * x[0])
    assert torch.allclose(ym[0], 0.7 * s[0] + 0.3 * s[1])
    assert torch.allclose(ym.sum(1), s.sum(1).flip(0) * 0.3 + s.sum(1) * 0.7)


def test_sampler_same_micro_batches_whatever_the_world_size():
    one = GlobalBatchSampler(50, micro_batch=4, world=1, rank=0, accum=2, seed=3)
    two = [GlobalBatchSampler(50, micro_batch=4, world=2, rank=r, accum=1, seed=3) for r in range(2)]
    assert one.steps_per_epoch == two[0].steps_per_epoch == 6  # 50 // 8, the last partial batch dropped
    for epoch in range(2):
        b1 = one.batches(epoch)
        b2 = [s.batches(epoch) for s in two]
        for step in range(6):
            assert b1[2 * step] == b2[0][step] and b1[2 * step + 1] == b2[1][step]
        seen = [i for b in b1 for i in b]
        assert len(seen) == len(set(seen)) == 48
        assert one.batches(epoch, start_step=4) == b1[8:]  # resume inside the epoch
    assert one.batches(0) != one.batches(1)


# ----------------------------------------------------------------------------------
# runs
# ----------------------------------------------------------------------------------
def _train_args(run: Path, stores, *extra, kind: str = "logmel"):
    return TINY + _data_args(stores, kind, "train96") + ["epochs=2", "effective_batch=8", "checkpoint_every=1", f"output_dir={run}", *extra]


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory, stores, one_thread):
    """Uninterrupted 2-epoch runs, one per data path (in this process, on one thread like the
    CLI runs with threads=1), made when first asked for: the references for resume."""
    made = {}

    def get(kind: str):
        if kind not in made:
            run = tmp_path_factory.mktemp(f"full_{kind}") / "run"
            made[kind] = run, train(load_config(None, _train_args(run, stores, kind=kind)), progress=False)
        return made[kind]

    return get


@pytest.fixture(scope="module")
def full_run(reference_runs):
    return reference_runs("logmel")


@pytest.mark.parametrize("kind", ["logmel", "waveform"])
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, stores, reference_runs, kind):
    ref_run, ref_summary = reference_runs(kind)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "pipelines.train", *_train_args(run, stores, kind=kind)]
    # log_every=1 (a setting resume may change): a log line after each step is the event the kill waits for
    proc = subprocess.Popen([*cmd, "log_every=1"], cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log_lines = []
    try:
        for line in proc.stderr:  # blocks until training writes a line, or ends (EOF)
            log_lines.append(line)
            if re.search(r"epoch 0 step 3/", line):
                break
        else:
            pytest.fail(f"training ended before it could be killed: {''.join(log_lines)[-500:]}")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed = read_checkpoint(run / "last.pt")
    assert killed["global_step"] < 24 and 0 < killed["step_in_epoch"] < 12, f"the kill should land inside an epoch, not at {killed['epoch']}/{killed['step_in_epoch']}"
    res = subprocess.run([*cmd, "--resume"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert not list(run.glob(".last.pt.tmp*"))  # a checkpoint half-written at the kill is cleaned up
    a, b = read_checkpoint(ref_run / "last.pt"), read_checkpoint(run / "last.pt")
    assert a["global_step"] == b["global_step"] == 24
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), f"{k} differs after resume"
    assert _steps(run) == _steps(ref_run)  # the same loss at every step, bit for bit
    with open(run / "metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1"]
    # the CLI logs into the run folder, both the killed run and its resumption
    log_text = (run / "train.log").read_text()
    assert "convnext_atto_dcls_audio:" in log_text and f"resumed {run / 'last.pt'}" in log_text
    augment = DATA_PATHS[kind][1].split("=")[1]
    assert f"data path: {kind} items" in log_text and f"(augment={augment})" in log_text
    assert ref_summary["data_path"] == {"items": kind, "augment": augment, "long_clips": None}
    assert ref_summary["eval"]["mAP"] > 0.5  # learnable with either data path (chance is ~0.45)


def test_resume_guards(full_run, stores):
    run, _ = full_run
    with pytest.raises(ConfigError, match="already holds a run"):
        train(load_config(None, _train_args(run, stores)), progress=False)
    with pytest.raises(ConfigError, match=r"lr: 0\.002 -> 0\.001"):
        train(load_config(None, _train_args(run, stores, "lr=1e-3")), resume=True, progress=False)


@pytest.mark.parametrize("kind", ["logmel", "waveform"])
def test_ddp_two_processes_match_one_process(tmp_path, stores, one_thread, kind):
    common = TINY + _data_args(stores, kind, "train64") + ["epochs=2", "effective_batch=16"]
    single = tmp_path / "single"
    train(load_config(None, common + [f"output_dir={single}"]), progress=False)  # 1 process x 2 accumulation steps
    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pipelines.train", *common, f"output_dir={ddp}"]
    res = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    s1, s2 = _steps(single), _steps(ddp)
    assert len(s1) == len(s2) == 8
    for (i, l1), (j, l2) in zip(s1, s2):
        assert i == j and l1 == pytest.approx(l2, rel=1e-5, abs=1e-7)
    with open(single / "metrics.csv") as f1, open(ddp / "metrics.csv") as f2:
        e1, e2 = list(csv.DictReader(f1)), list(csv.DictReader(f2))
    # evaluation gathered from both ranks scores the whole eval set like one process does
    for r1, r2 in zip(e1, e2):
        assert float(r1["eval_mAP"]) == pytest.approx(float(r2["eval_mAP"]), abs=1e-4)
    w1, w2 = read_checkpoint(single / "last.pt")["model"], read_checkpoint(ddp / "last.pt")["model"]
    for k in w1:
        assert torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-5), k


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, stores, capsys):
    run = tmp_path / "run"
    # step 0 trains at warmup_lr; the next lr (~1e29) blows the weights up
    args = TINY + [f"train=[{stores['train64']}]", "epochs=1", "effective_batch=8", "warmup_epochs=1", "warmup_lr=1e-4", "lr=1e30", "checkpoint_every=1", f"output_dir={run}"]
    assert main(args) == 3
    # The log goes to stderr too; the error itself is the last line, one line.
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("train: error: non-finite")
    assert "last good checkpoint" in err and "--resume" in err
    ckpt = read_checkpoint(run / "last.pt")
    # the checkpoint kept is the one the message names, before the blow-up
    kept = int(re.search(r"global step (\d+)", err).group(1))
    assert ckpt["global_step"] == kept and 1 <= kept < 8
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert not (run / "release").exists()


def test_evaluation_during_training_is_the_evaluate_path(tmp_path, stores, one_thread, capsys):
    """Front-end check and label alignment, as in pipelines.evaluate: an eval store of other
    log-mel settings is refused up front; one with a subset of the classes is scored by MID."""
    from dataclasses import replace

    other = make_tiny_store(tmp_path / "other_fe", n=16, seed=3, frontend=replace(tiny_frontend(), f_max=8000.0))
    args = TINY + [f"train=[{stores['train64']}]", "epochs=1", "effective_batch=8", "release=false"]
    assert main(args + [f"eval={other}", f"output_dir={tmp_path / 'refused'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "train: error: the data was computed with other front-end settings than the model was trained with (f_max)"
    subset = make_tiny_store(tmp_path / "subset", n=24, classes=3, seed=4)  # /t/tiny0..2 of the model's four
    summary = train(load_config(None, args + [f"eval={subset}", f"output_dir={tmp_path / 'run'}", "release=true"]), progress=False)
    ev = summary["eval"]
    assert ev["num_classes"] == 4 and ev["classes_scored_ap"] == 3 and ev["num_clips"] == 24
    from pipelines.evaluate import main as evaluate_main

    assert evaluate_main([summary["release"], "--store", str(subset), "--out", str(tmp_path / "ev"), "--device", "cpu", "--workers", "0"]) == 0
    standalone = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert standalone["mAP"] == pytest.approx(ev["mAP"], abs=1e-6) and standalone["mAUC"] == pytest.approx(ev["mAUC"], abs=1e-6)


def test_release_round_trip(full_run, stores):
    from safetensors.torch import load_file

    from audio_dcls.checkpoint import load_release
    from audio_dcls.model_factory import build_model

    run, summary = full_run
    folder = Path(summary["release"])
    assert folder == run / "release" / "convnext_atto_dcls_audio-train96-seed0"
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "labels.csv", "model.safetensors"]
    load_file(folder / "model.safetensors")  # plain safetensors, no pickle
    rel = load_release(folder)
    assert rel.arch == "convnext_atto_dcls_audio" and rel.model_args["dims"] == TINY_MODEL_ARGS["dims"]
    assert "drop_path_rate" not in rel.model_args
    assert rel.frontend == tiny_frontend()
    assert rel.labels == [(f"/t/tiny{i}", f"tiny class {i}") for i in range(4)]
    assert rel.training["eval"]["mAP"] == pytest.approx(summary["eval"]["mAP"])
    assert rel.training["global_steps"] == 24 and rel.training["finished"]
    # The classes the training store has positives for, read from its label matrix directly.
    train_labels = np.concatenate([np.load(p) for p in sorted((stores["train96"] / "shards").glob("*.targets.npy"))])
    assert rel.training["populated_classes"] == [c for c in range(4) if train_labels[:, c].any()]
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    assert cfg["training"]["eval"]["classes_scored_ap"] == 4
    ckpt = read_checkpoint(run / "last.pt")
    model = build_model(ckpt["arch"], ckpt["model_args"], 4)
    model.load_state_dict(ckpt["model"])
    model.eval()
    x = torch.randn(3, 1, 128, 128)
    with torch.no_grad():
        assert torch.equal(rel.model(x), model(x))
    assert summary["eval"]["mAP"] > 0.5  # a learnable tiny set: well above chance after 24 steps
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1"] and all(r["eval_mAP"] for r in rows)
    assert (run / "config.yaml").is_file()
    assert LabelVocabulary.from_csv(run / "labels.csv").mids == tuple(m for m, _ in rel.labels)  # the vocabulary is kept in the run folder


# ----------------------------------------------------------------------------------
# make train-audioset: finding AudioSet under AUDIOSET_ROOT
# ----------------------------------------------------------------------------------
def test_train_audioset_finds_the_layouts(tmp_path):
    from pipelines.train_audioset import SetupError, find_audioset

    root = tmp_path / "as"
    (root / "audio" / "balanced_train_segments").mkdir(parents=True)
    (root / "audios" / "eval_segments").mkdir(parents=True)
    for name in ("balanced_train_segments.csv", "eval_segments.csv"):
        (root / name).write_text("# Segments csv\n")
    found = find_audioset(root)
    assert set(found) == {"balanced_train", "eval"}  # no unbalanced split: allowed, with a warning
    assert found["eval"].audio_dir == root / "audios" / "eval_segments" and found["eval"].kind == "audioset"
    packs = tmp_path / "panns" / "hdf5s" / "waveforms"
    (packs / "unbalanced_train").mkdir(parents=True)
    for name in ("balanced_train.h5", "eval.h5", "unbalanced_train/unbalanced_train_part00.h5", "unbalanced_train/unbalanced_train_part01.h5"):
        (packs / name).write_bytes(b"")
    found = find_audioset(tmp_path / "panns")
    assert found["unbalanced_train"].kind == "hdf5" and len(found["unbalanced_train"].hdf5) == 2
    # the paper recipes train on waveform stores, a recipe without waveform augmentation on log-mels
    from pipelines.train_audioset import store_kind

    for recipe in ("convnext_tiny", "convnext_tiny_dcls", "convformer_s18", "convformer_s18_dcls", "fastvit_sa24", "fastvit_sa24_dcls"):
        assert store_kind(str(REPO / "configs" / f"{recipe}.yaml"), []) == "waveform"
    assert store_kind(str(REPO / "configs" / "convnext_tiny_dcls.yaml"), ["augment=specaugment"]) == "logmel"
    assert store_kind(str(REPO / "configs" / "cpu_mini.yaml"), []) == "logmel"
    (root / "eval_segments.csv").unlink()
    with pytest.raises(SetupError, match="eval_segments.csv is missing"):
        find_audioset(root)
    with pytest.raises(SetupError, match="not a folder"):
        find_audioset(tmp_path / "nothing")


def test_resume_replays_the_recorded_kernel_routes(tmp_path, stores, one_thread):
    """The routes autotuning/timing picked (audio_dcls.ops.config) travel in last.pt, one table
    per rank, and a resumed run loads them back before its first step instead of measuring again."""
    from audio_dcls import ops

    recorded = {
        "version": 1,
        "wgrad": {"8,16,32,31,32,31,23,23,bfloat16": "fft"},
        "tiles": {"fwd": {"8,16,32,31,32,31,23,23,bfloat16": {"BLOCK_R": 64, "BLOCK_W": 32, "BLOCK_K": 64, "I_BLOCK": 1, "num_warps": 4, "num_stages": 3}}, "wgrad": {}},
    }
    run = tmp_path / "run"
    args = TINY + [f"train=[{stores['train64']}]", "epochs=2", "effective_batch=8", "release=false", f"output_dir={run}"]
    try:
        ops.config.load_routes_state(recorded)  # what the first steps of a GPU run would have measured
        train(load_config(None, args + ["max_steps=3"]), progress=False)
        saved = read_checkpoint(run / "last.pt")["ops_routes"]
        assert saved == [ops.config.routes_state()] and saved[0]["wgrad"] == recorded["wgrad"]
        ops.config.clear_routes()  # a fresh process knows nothing
        assert ops.config.routes_state()["wgrad"] == {}
        train(load_config(None, args), resume=True, progress=False)
        assert ops.config.routes_state() == saved[0]  # loaded back, not re-measured
        assert read_checkpoint(run / "last.pt")["global_step"] == 16
    finally:
        ops.config.clear_routes()


def test_populated_classes_are_those_with_a_positive(tmp_path):
    from pipelines.data import open_data, open_training_data
    from pipelines.feature_store import SHARD_DIR, Plan, finalize_store, write_shard
    from tiny_store import tiny_vocabulary

    def store(folder, labels):
        plan = Plan(tiny_frontend(), tiny_vocabulary(5), {"kind": "tiny-test"}, folder.name, len(labels), len(labels))
        (folder / SHARD_DIR).mkdir(parents=True)
        (folder / "plan.json").write_text(json.dumps(plan.to_dict()))
        feats = np.zeros((len(labels), 128, 128), np.float16)
        write_shard(folder, 0, [f"{folder.name}{i}" for i in range(len(labels))], feats, np.array(labels, np.uint8), [])
        finalize_store(folder)
        return str(folder)

    a = store(tmp_path / "a", [[1, 0, 0, 0, 0], [1, 0, 0, 1, 0]])
    b = store(tmp_path / "b", [[0, 0, 0, 0, 1]])
    assert open_data(a).populated_classes() == [0, 3]
    assert open_training_data([a, b]).populated_classes() == [0, 3, 4]  # classes 1 and 2: never positive
