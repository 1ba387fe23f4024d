"""Fine-tuning: init_from a release or checkpoint, classifier rows by class, freeze, learning-rate
scales, head_bias_init=auto, the parent recorded (and never needed again), DDP = accumulation and
exact resume with frozen parts, and `make finetune` (pipelines.finetune) end to end on real WAV files,
served over HTTP with its custom vocabulary's empty MIDs."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import timm
import torch
import yaml

import audio_dcls.models  # noqa: F401  (registers the models)
from audio_dcls.checkpoint import load_release, save_release
from audio_dcls.labels import LabelVocabulary
from custom_sounds import balanced_clips, write_clip, write_dataset
from pipelines.checkpoints import read_checkpoint
from pipelines.init_from import InitFromError, initialise, read_parent
from pipelines.model_parts import classifier_layer, freeze_parts
from pipelines.train import train
from pipelines.train_config import load_config
from pipelines.train_state import auto_head_bias, build_run_state, build_training_model
from pipelines.train_step import MicroBatch, train_step
from tiny_store import TINY_MODEL_ARGS, make_tiny_store, tiny_frontend

REPO = Path(__file__).resolve().parent.parent
ARCH = "convnext_atto_dcls_audio"
TINY = [
    f"model={ARCH}", "model_args={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}", "layer_scale_init=1.0", "drop_path=0.1",
    "workers=0", "warmup_epochs=0.5", "lr=2e-3", "batch_size=8", "channels_last=false", "threads=1", "log_every=1",
    "augment=none",  # log-mel stores (the paper's augment=dcls_audio needs waveform stores)
]
# The parent's classes: two of the run's five (/t/tiny1, /t/tiny3 of tiny_store's vocabulary), one not.
PARENT_LABELS = [("/t/tiny3", "tiny class 3"), ("/t/other", "another sound"), ("/t/tiny1", "tiny class 1")]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _parent(folder: Path, labels=PARENT_LABELS, seed: int = 7) -> Path:
    """A small release (random weights, its own seed): what a user fine-tunes."""
    torch.manual_seed(seed)
    args = dict(TINY_MODEL_ARGS, num_classes=len(labels), ls_init_value=1.0)
    model = timm.create_model(ARCH, **args)
    with torch.no_grad():  # distinct, non-trivial values everywhere (a trained model has no zeros in its head)
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return save_release(folder, model, ARCH, args, tiny_frontend(), labels, "custom", {"note": "test parent"})


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    return {"root": root, "train": make_tiny_store(root / "train", n=32, classes=5, seed=0), "eval": make_tiny_store(root / "eval", n=16, classes=5, seed=1)}


# ----------------------------------------------------------------------------------
# the pieces
# ----------------------------------------------------------------------------------
def test_classifier_rows_are_copied_by_class_and_the_backbone_exactly(tmp_path):
    parent_dir = _parent(tmp_path / "parent")
    parent = load_release(parent_dir)
    vocab = LabelVocabulary([f"/t/tiny{i}" for i in range(5)], [f"tiny class {i}" for i in range(5)])
    cfg = load_config(None, TINY + ["train=[x]"])
    torch.manual_seed(0)
    model = build_training_model(cfg, 5)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    summary = initialise(model, str(parent_dir), vocab)
    got, want = model.state_dict(), parent.model.state_dict()
    for k in got:
        if not k.startswith("head.fc."):
            assert torch.equal(got[k], want[k]), k
    W, b, PW, Pb = got["head.fc.weight"], got["head.fc.bias"], want["head.fc.weight"], want["head.fc.bias"]
    for j, i in ((1, 2), (3, 0)):  # tiny1 <- parent row 2, tiny3 <- parent row 0
        assert torch.equal(W[j], PW[i]) and torch.equal(b[j], Pb[i])
    for j in (0, 2, 4):  # new classes keep their fresh rows
        assert torch.equal(W[j], fresh["head.fc.weight"][j]) and torch.equal(b[j], fresh["head.fc.bias"][j])
    c = summary.detail["classifier"]
    assert [(x["index"], x["parent_index"]) for x in c["copied"]] == [(1, 2), (3, 0)] and c["new"] == ["tiny class 0", "tiny class 2", "tiny class 4"]
    assert c["parent_classes_unused"] == 1 and not c["kept_whole"]
    assert summary.parent["sha256"] == _sha256(parent_dir / "model.safetensors") and summary.parent["name"] == "parent"
    # the same vocabulary keeps the whole classifier
    same = LabelVocabulary([m for m, _ in PARENT_LABELS], [n for _, n in PARENT_LABELS])
    model3 = build_training_model(cfg, 3)
    assert initialise(model3, str(parent_dir), same).detail["classifier"]["kept_whole"]
    assert torch.equal(model3.state_dict()["head.fc.weight"], PW)
    # another architecture is refused with the overrides that would fit
    with pytest.raises(InitFromError, match=r"does not fit this model: .*model_args=\{\"depths\":\[1,1,1,1\],\"dims\":\[8,16,32,64\]"):
        initialise(build_training_model(load_config(None, TINY + ["train=[x]", "model_args={depths: [1, 1, 1, 1], dims: [8, 16, 32, 128]}"]), 5), str(parent_dir), vocab)
    with pytest.raises(InitFromError, match="no such release folder or checkpoint"):
        read_parent(str(tmp_path / "nothing"))


def test_freeze_backbone_and_stages_eval_mode_and_optimizer_groups():
    cfg = load_config(None, TINY + ["train=[x]", "freeze=stages:2", "head_lr_scale=10", "backbone_lr_scale=0.5", "effective_batch=8"])
    state = build_run_state(cfg, 5, torch.device("cpu"), steps_per_epoch=4, accum=1)
    frozen = {n for n, p in state.model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("stem.", "stages.0.", "stages.1.")) for n in frozen)
    assert not any(n.startswith(("stem.", "stages.0.", "stages.1.")) for n, p in state.model.named_parameters() if p.requires_grad)
    in_opt = {id(p) for g in state.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_opt for p in state.model.parameters() if not p.requires_grad)  # frozen: not in the optimizer
    scales = {g["group"]: g["lr_scale"] for g in state.optimizer.param_groups}
    assert scales["decay/head"] == 10.0 and scales["no_decay/head"] == 10.0 and scales["decay/backbone"] == 0.5
    assert scales["positions/backbone"] == pytest.approx(0.5 * cfg.position_lr_scale)
    state.model.train()
    x, y = torch.randn(8, 1, 128, 128), (torch.rand(8, 5) < 0.3).float()
    before = {n: p.detach().clone() for n, p in state.model.named_parameters()}
    train_step(state, [MicroBatch(0, x, y)])
    assert all(not m.training for m in state.frozen.modules) and state.model.stages[2].training  # frozen parts in eval mode
    for n, p in state.model.named_parameters():
        assert torch.equal(p, before[n]) == (n in frozen), n
    # backbone: everything but the classifier
    model = build_training_model(cfg, 5)
    parts = freeze_parts(model, "backbone")
    head, layer = classifier_layer(model)
    assert head == "head.fc" and all(p.requires_grad for p in layer.parameters())
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("head.fc."))
    assert parts.parameters == sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head.fc."))
    # ConvFormer's classifier is the last Linear of its MLP head
    cf = timm.create_model("convformer_atto_dcls_audio", num_classes=5, depths=[1, 1, 1, 1], dims=[8, 16, 32, 64])
    assert classifier_layer(cf)[0] == "head.fc.fc2"


def test_head_bias_auto_is_the_logit_of_the_smoothed_rate():
    rate = np.array([0.5, 0.0, 1.0, 0.1])
    eps = 0.1
    p = np.clip((1 - eps) * rate + eps / 4, 1e-4, 1 - 1e-4)  # 0.475, 0.025, 0.925, 0.115
    np.testing.assert_allclose(auto_head_bias(rate, eps).numpy(), np.log(p / (1 - p)), rtol=1e-6)
    np.testing.assert_allclose(auto_head_bias(np.array([0.0, 0.0]), 0.0).numpy(), [np.log(1e-4 / (1 - 1e-4))] * 2, rtol=1e-6)
    cfg = load_config(None, TINY + ["train=[x]", "head_bias_init=auto"])
    model = build_training_model(cfg, 4, rate)
    assert torch.allclose(model.head.fc.bias, auto_head_bias(rate, cfg.label_smoothing))


# ----------------------------------------------------------------------------------
# runs
# ----------------------------------------------------------------------------------
def test_fine_tune_a_release_onto_five_classes_with_freeze_backbone(stores, tmp_path, one_thread):
    parent_dir = _parent(tmp_path / "parent-release")
    parent_sha = _sha256(parent_dir / "model.safetensors")
    parent_state = {k: v.clone() for k, v in load_release(parent_dir).model.state_dict().items()}
    run = tmp_path / "run"
    cfg = load_config(None, TINY + [f"train=[{stores['train']}]", f"eval={stores['eval']}", "epochs=2", "effective_batch=8",
                                    f"init_from={parent_dir}", "freeze=backbone", "head_bias_init=auto", "head_lr_scale=5", f"output_dir={run}", "name=five-sounds"])
    summary = train(cfg, progress=False)
    assert summary["finished"] and summary["global_steps"] == 8
    record = json.loads((run / "init_from.json").read_text())
    assert [x["name"] for x in record["classifier"]["copied"]] == ["tiny class 1", "tiny class 3"]
    release = Path(summary["release"])
    assert release == run / "release" / "five-sounds"
    shutil.rmtree(parent_dir)  # the new release never needs the parent's files
    rel = load_release(release)
    got = rel.model.state_dict()
    for k, v in parent_state.items():
        if not k.startswith("head.fc."):
            assert torch.equal(got[k], v), f"frozen {k} changed"  # bit-identical after training
    assert not torch.equal(got["head.fc.weight"][[1, 3]], parent_state["head.fc.weight"][[2, 0]])  # the classifier trained
    parent = yaml.safe_load((release / "config.yaml").read_text())["training"]["init_from"]["parent"]
    assert parent["name"] == "parent-release" and parent["sha256"] == parent_sha and parent["format"] == "release"
    assert rel.labels == [(f"/t/tiny{i}", f"tiny class {i}") for i in range(5)]


def test_fine_tuning_keeps_ddp_equal_accumulation_and_exact_resume(stores, tmp_path, one_thread):
    parent_dir = _parent(tmp_path / "parent")
    common = TINY + [f"train=[{stores['train']}]", f"eval={stores['eval']}", "epochs=2", "effective_batch=16", "checkpoint_every=1",
                     f"init_from={parent_dir}", "freeze=stages:2", "head_lr_scale=3", "head_bias_init=auto"]
    single = tmp_path / "single"
    train(load_config(None, common + [f"output_dir={single}"]), progress=False)  # 1 process x 2 accumulation steps
    # stopped after 2 steps, the parent deleted, then resumed: the same weights bit for bit
    parts = tmp_path / "parts"
    train(load_config(None, common + [f"output_dir={parts}", "max_steps=2"]), progress=False)
    moved = tmp_path / "parent-moved"
    parent_dir.rename(moved)
    train(load_config(None, common + [f"output_dir={parts}"]), resume=True, progress=False)
    a, b = read_checkpoint(single / "last.pt"), read_checkpoint(parts / "last.pt")
    assert a["global_step"] == b["global_step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert b["init_from"]["parent"]["sha256"] == a["init_from"]["parent"]["sha256"]
    moved.rename(parent_dir)
    # 2 processes x 1 = 1 process x 2, frozen stages included
    ddp = tmp_path / "ddp"
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pipelines.train", *common, f"output_dir={ddp}"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    w1, w2 = a["model"], read_checkpoint(ddp / "last.pt")["model"]
    for k in w1:
        assert torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-5), k
        if k.startswith(("stem.", "stages.0.", "stages.1.")):
            assert torch.equal(w1[k], w2[k]), k  # frozen: untouched on every rank


def test_init_from_a_training_checkpoint(stores, tmp_path, one_thread):
    run = tmp_path / "first"
    train(load_config(None, TINY + [f"train=[{stores['train']}]", "epochs=1", "effective_batch=8", f"output_dir={run}"]), progress=False)
    ckpt = read_checkpoint(run / "last.pt")
    parent = read_parent(str(run / "last.pt"))
    assert parent.format == "checkpoint" and parent.arch == ARCH and len(parent.vocabulary) == 5 and parent.sha256 == _sha256(run / "last.pt")
    cfg = load_config(None, TINY + ["train=[x]"])
    model = build_training_model(cfg, 5)
    assert initialise(model, str(run / "last.pt"), parent.vocabulary, parent).detail["classifier"]["kept_whole"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k


def test_init_from_an_upstream_file_goes_to_the_upstream_loader(stores, tmp_path, one_thread):
    """A timm ConvNeXt checkpoint (not our format): audio_dcls.convert loads all but the stem and the classifier."""
    from safetensors.torch import save_file

    upstream = {k: v.contiguous() for k, v in timm.create_model("convnext_atto", **TINY_MODEL_ARGS).state_dict().items()}
    path = tmp_path / "convnext_atto_imagenet.safetensors"
    save_file(upstream, str(path))
    assert read_parent(str(path)) is None  # not ours
    model = build_training_model(load_config(None, TINY + ["train=[x]", "model=convnext_atto_audio"]), 5)
    summary = initialise(model, str(path), LabelVocabulary([f"/t/tiny{i}" for i in range(5)]))
    assert summary.format == "timm ConvNeXt" and summary.parent["sha256"] == _sha256(path)
    assert torch.equal(model.stages[1].blocks[0].conv_dw.weight, upstream["stages.1.blocks.0.conv_dw.weight"])
    run = tmp_path / "run"
    summary = train(load_config(None, TINY + ["model=convnext_atto_audio", f"train=[{stores['train']}]", "epochs=1", "effective_batch=8", f"init_from={path}", f"output_dir={run}"]), progress=False)
    record = json.loads((run / "init_from.json").read_text())
    assert record["format"] == "timm ConvNeXt" and ["stem.0.weight", "audio stem (fresh init)"] in record["kept_fresh"]
    assert summary["init_from"]["parent"]["sha256"] == _sha256(path)


# ----------------------------------------------------------------------------------
# make finetune, end to end
# ----------------------------------------------------------------------------------
def test_make_finetune_end_to_end_on_real_files_then_served(tmp_path, capsys):
    from pipelines.finetune import main
    from service.server import BackgroundServer
    from service.settings import Settings

    labels = ["knock-knock", "door creak", "Dog", "whirr", "bloop"]  # one AudioSet class, four of our own
    data = tmp_path / "my_sounds"
    csvs = write_dataset(data, {"train": balanced_clips(labels, 4), "eval": balanced_clips(labels, 2, seed=1)}, audio_subdir="clips")
    (data / "labels.csv").write_text("path,labels\nnot,ours\n")  # the dataset ships its own labels.csv
    # the same CSVs with paths relative to AUDIO_DIR instead of the CSV's folder
    moved = tmp_path / "elsewhere"
    (data / "clips").rename(moved)
    parent_dir = _parent(tmp_path / "runs" / "release" / "tiny-parent", labels=[("", "knock-knock"), ("/m/0bt9lr", "Dog"), ("", "unused")])
    before = sorted(p.name for p in data.rglob("*"))
    argv = ["--train-csv", str(csvs["train"]), "--eval-csv", str(csvs["eval"]), "--audio-dir", str(tmp_path), "--init-from", str(parent_dir),
            "--runs", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data"), "--workers", "1",
            "epochs=2", "batch_size=8", "effective_batch=8", "threads=1", "--name", "my-tagger"]
    # paths in the CSVs say clips/..., which now live under tmp_path/elsewhere: point AUDIO_DIR at a folder holding clips/
    (tmp_path / "clips").symlink_to(moved)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "finetune finished: eval mAP" in out
    assert sorted(p.name for p in data.rglob("*")) == before  # nothing written into the dataset's folder
    release = tmp_path / "runs" / "release" / "my-tagger"
    report = (tmp_path / "runs" / "finetune" / "my-tagger" / "REPORT.md").read_text()
    assert f"fine-tuned from `{parent_dir}`" in report and "2 of 5 classes copied" in report and "eval mAP" in report
    # a custom vocabulary's MIDs are empty end to end: store, run folder, release
    expected = [("", "bloop"), ("/m/0bt9lr", "Dog"), ("", "door creak"), ("", "knock-knock"), ("", "whirr")]
    for f in (tmp_path / "data" / "stores" / "finetune" / "my-tagger" / "train" / "labels.csv", tmp_path / "runs" / "finetune" / "my-tagger" / "labels.csv", release / "labels.csv"):
        v = LabelVocabulary.from_csv(f)
        assert sorted(zip(v.mids, v.display_names), key=lambda x: x[1].lower()) == sorted(expected, key=lambda x: x[1].lower()), f
    with open(release / "labels.csv", newline="") as f:
        assert {r["display_name"]: r["mid"] for r in csv.DictReader(f)}["whirr"] == ""
    summary = json.loads((tmp_path / "runs" / "finetune" / "my-tagger" / "eval" / "summary.json").read_text())
    assert summary["classes_scored_ap"] == 5
    # a rerun reuses the finished run; other settings under the same name are refused
    assert main(argv) == 0
    assert main(argv + ["epochs=3"]) == 1
    assert "holds a finished run with other settings (epochs)" in capsys.readouterr().err
    # served: the labels and tags carry the empty MIDs, not the names
    shutil.rmtree(parent_dir)
    settings = Settings(models_dir=tmp_path / "runs" / "release", torch_threads=1, warmup=False)
    wav = write_clip(tmp_path / "q.wav", ["whirr"], seconds=1.3)
    with BackgroundServer(settings) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        body = client.get("/v1/labels", params={"model": "my-tagger"}).json()
        assert {x["name"]: x["mid"] for x in body["labels"]} == {n: m for m, n in expected}
        tag = client.post("/v1/tag", files={"file": ("q.wav", wav.read_bytes(), "audio/wav")}, data={"model": "my-tagger", "top_k": "5"}).json()
        assert {t["name"]: t["mid"] for t in tag["tags"]} == {n: m for m, n in expected}
