"""pipelines.import_checkpoint / audio_dcls.convert: DCLS-Audio's released checkpoints as releases.

Checkpoints are written in the four released layouts (tests/dcls_audio_state_dicts.json)
with random weights, the way DCLS-Audio saves them. The oracle for outputs is
tests/upstream_reference.py, the upstream forward passes written out by hand on
the upstream keys (DCLS-Audio's own model code is not a dependency and is not run):
blocks with the reference package's DCLS kernels, whole models with the same
kernel formula written separably.
"""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
import yaml
from safetensors import safe_open

from audio_dcls.checkpoint import load_release
from audio_dcls.convert import (
    CheckpointError,
    check_front_end,
    dcls_audio_front_end,
    file_sha256,
    import_dcls_audio,
    read_checkpoint,
    rename_state,
    detect_layout,
)
from audio_dcls.convert.key_match import shared_parameter_groups
from audio_dcls.features import LogMelConfig
from audio_dcls.models import prepare_for_inference
from pipelines import import_checkpoint

import upstream_reference as ref
from upstream_checkpoints import layouts, random_state, save_dcls_audio

LAYOUTS = layouts()
NAMES = list(LAYOUTS)
FORWARD = {
    "convnext_dcls_audio_tiny": ref.convnext_forward,
    "convformer_audio_s18": ref.convformer_forward,
    "convformer_dcls_audio_s18": ref.convformer_forward,
    "fastvit_dcls_audio_sa24": ref.fastvit_forward,
}
INPUT = torch.randn(2, 1, 128, 200, generator=torch.Generator().manual_seed(1))  # (B, 1, mels, frames)


@pytest.fixture(scope="module")
def released(tmp_path_factory, one_thread):
    """name -> (checkpoint path, upstream state dict), one file per released layout."""
    root = tmp_path_factory.mktemp("dcls_audio")
    out = {}
    for i, (name, info) in enumerate(LAYOUTS.items()):
        state = random_state(info["state_dict"], seed=10 + i)
        out[name] = (save_dcls_audio(root / info["released_file"], name, state), state)
    return out


def _run(capsys, *argv):
    rc = import_checkpoint.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# --- front end -------------------------------------------------------------------------------
def test_front_end_is_ours():
    assert dcls_audio_front_end() == LogMelConfig()
    check_front_end(LogMelConfig())
    with pytest.raises(CheckpointError, match="f_min: DCLS-Audio 50.0, ours 0.0"):
        check_front_end(LogMelConfig(f_min=0.0))


# --- every layout: mapping, sharing, release ---------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_our_shared_positions_are_the_layouts_same_tensor_as(name):
    import timm

    info = LAYOUTS[name]
    with torch.device("meta"):
        model = timm.create_model(info["our_model"])
    state = {e["key"]: torch.empty(e["shape"], device="meta") for e in info["state_dict"]}
    ours_of = {m.source_key: m.key for m in rename_state(detect_layout(state), state, model.state_dict())}
    theirs = {}
    for e in info["state_dict"]:
        root = e.get("same_tensor_as", e["key"])
        theirs.setdefault(root, []).append(ours_of[e["key"]])
    theirs = sorted(sorted(g) for g in theirs.values() if len(g) > 1)
    assert theirs == sorted(sorted(g) for g in shared_parameter_groups(model))
    assert sum(p.numel() for p in model.parameters()) == info["unique_parameters"]


@pytest.mark.parametrize("name", NAMES)
def test_release_holds_exactly_the_checkpoint_tensors(name, released, tmp_path, capsys):
    path, state = released[name]
    info = LAYOUTS[name]
    rc, out, err = _run(capsys, path, "--out", tmp_path, "--name", "paper")
    assert rc == 0, err
    print(out)  # the import summary, shown with pytest -s
    assert f"-> {info['our_model']} (detected from the keys)" in out
    assert f"{len(state)} checkpoint keys -> {len(state)} model keys, all mapped, none left over" in out
    assert "reloaded:" in out and "tensors identical" in out

    folder = tmp_path / "paper"
    release = load_release(folder)
    assert release.arch == info["our_model"] and len(release.labels) == 527
    ours = release.model.state_dict()
    model_keys = {m.source_key: m.key for m in rename_state(detect_layout(state), state, ours)}
    assert len(set(model_keys.values())) == len(ours) == len(state)
    for key, tensor in state.items():
        mine = ours[model_keys[key]]
        assert torch.equal(mine, tensor.reshape(mine.shape)), key

    config = yaml.safe_load((folder / "config.yaml").read_text())
    source = config["source"]  # top-level record, read back as Release.source
    assert source == release.source and "source" not in config["training"]
    assert source["sha256"] == file_sha256(path) and source["file"] == info["released_file"]
    assert source["weights"] == "model" and source["epoch"] == 59 and source["upstream_model"] == name
    assert source["reported_map"] in (45.52, 43.14, 43.68, 44.40)
    assert config["frontend"] == LogMelConfig().to_dict()

    # Shared positions/spreads: one tensor per stage in the file.
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        stored = set(f.keys())
    groups = shared_parameter_groups(release.model)
    assert all(sum(k in stored for k in g) == 1 for g in groups)
    assert len(stored) == len(ours) - sum(len(g) - 1 for g in groups)


def test_model_ema_bare_and_module_prefixed_state_dicts(released, tmp_path, capsys):
    name = "convformer_audio_s18"
    path, state = released[name]
    ema = {k: v + 1.0 if v.is_floating_point() else v for k, v in state.items()}
    with_ema = save_dcls_audio(tmp_path / "with_ema.pth", name, state, ema=ema)
    r = import_dcls_audio(with_ema, weights="model_ema")
    assert r.source["weights"] == "model_ema"
    assert torch.equal(r.model.state_dict()["stem.conv.weight"], ema["downsample_layers.0.conv.weight"])

    bare = tmp_path / "bare.pth"
    torch.save({"module." + k: v for k, v in state.items()}, bare)
    rc, out, err = _run(capsys, bare, "--out", tmp_path / "bare-release")
    assert rc == 0, err
    assert "weights bare state dict" in out
    r = load_release(tmp_path / "bare-release")
    assert torch.equal(r.model.state_dict()["head.fc.fc2.bias"], state["head.fc2.bias"])
    assert yaml.safe_load((tmp_path / "bare-release" / "config.yaml").read_text())["source"]["reported_map"] is None
    assert r.source["kind"] == "dcls-audio-checkpoint"

    rc, _, err = _run(capsys, bare, "--out", tmp_path / "x", "--weights", "model")
    assert rc == 1 and "bare state dict has no 'model' entry" in err


# --- outputs: the upstream definitions are the oracle -------------------------------------------
def _double(state):
    return {k: v.double() if v.is_floating_point() else v for k, v in state.items()}


@pytest.mark.parametrize("name", NAMES)
def test_whole_model_outputs_match_upstream_definition(name, released):
    path, state = released[name]
    model = import_dcls_audio(path).model
    fast = prepare_for_inference(copy.deepcopy(model))
    with torch.no_grad():
        want = FORWARD[name](state, INPUT)
        got, got_inference = model(INPUT), fast(INPUT)
        want64 = FORWARD[name](_double(state), INPUT.double())
        got64 = copy.deepcopy(model).double()(INPUT.double())
    assert want.abs().max() > 0.5  # a real signal, not a vanishing one
    err32 = (got - want).abs().max().item()
    err_inf = (got_inference - want).abs().max().item()
    err64 = (got64 - want64).abs().max().item()
    print(f"{name}: max |ours - upstream| eval {err32:.2e}, prepare_for_inference {err_inf:.2e}, float64 {err64:.2e}")
    assert err32 < 1e-4 and err_inf < 1e-4
    assert err64 < 1e-9  # the same function, not just close numbers


def test_convnext_block_matches_upstream_block(released):
    path, state = released["convnext_dcls_audio_tiny"]
    model = import_dcls_audio(path).model
    x = torch.randn(1, 192, 16, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ref.convnext_block(x, state, "stages.1.2.", build=ref.reference_kernel)
        got = model.stages[1].blocks[2](x)
    assert (got - want).abs().max().item() < 1e-4


def test_fastvit_repmixer_block_matches_upstream_block(released):
    path, state = released["fastvit_dcls_audio_sa24"]
    model = import_dcls_audio(path).model
    x = torch.randn(1, 128, 16, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = ref.repmixer_block(x, state, "network.2.1.", build=ref.reference_kernel)
        got = model.stages[1].blocks[1](x)
        mixer = ref.mobileone(x, state, "network.2.1.token_mixer.mixer.", 1, 1, 128, act=False)
        got_mixer = model.stages[1].blocks[1].token_mixer.mixer(x)
    assert (got_mixer - mixer).abs().max().item() < 1e-5  # MobileOne: skip BN + 3x3 conv-BN + 1x1 conv-BN
    assert (got - want).abs().max().item() < 1e-4


def test_gauss_kernel_is_the_reference_packages():
    g = torch.Generator().manual_seed(4)
    w, p, s = torch.randn(8, 1, 26, generator=g), (3 * torch.randn(2, 8, 1, 26, generator=g)).clamp(-11, 11), torch.rand(2, 8, 1, 26, generator=g)
    assert (ref.gauss_kernel(w, p, s) - ref.reference_kernel(w, p, s)).abs().max().item() < 1e-6


def test_convformer_mlp_head_norm_uses_upstream_eps(released):
    """DCLS-Audio's MlpHead LayerNorm is nn.LayerNorm (eps 1e-5), timm's uses 1e-6: it matters at small variance."""
    path, state = released["convformer_audio_s18"]
    model = import_dcls_audio(path).model
    x = 1e-3 * torch.randn(3, 512, generator=torch.Generator().manual_seed(5))  # pooled, normalised features
    with torch.no_grad():
        want = ref.convformer_head(state, x)
        got = model.head.fc(x)
        model.head.fc.norm.eps = 1e-6
        timm_eps = model.head.fc(x)
    assert (got - want).abs().max().item() < 1e-5
    assert (timm_eps - want).abs().max().item() > 1e-3  # the test can tell the two apart
    model.reset_classifier(10)
    assert model.head.fc.norm.eps == 1e-5


# --- refusals: one line, exit status 1, nothing run -------------------------------------------
class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling would create the marker file
        return (open, (self.marker, "w"))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "args": _Payload(marker)}, evil)
    rc, out, err = _run(capsys, evil, "--out", tmp_path / "r")
    assert rc == 1 and not marker.exists()
    assert err.count("\n") == 1 and "refused to unpickle" in err and "open" in err
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        read_checkpoint(evil)
    pickle.loads(pickle.dumps(_Payload(marker))).close()  # not vacuous: plain unpickling does run it
    assert marker.exists()


def _broken(released, tmp_path, name, edit):
    path, state = released[name]
    state = dict(state)
    edit(state)
    return save_dcls_audio(tmp_path / "broken.pth", name, state)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda s: s.__setitem__("stages.0.0.extra.weight", torch.zeros(3)), "stages.0.0.extra.weight (as stages.0.blocks.0.extra.weight) has no place"),
        (lambda s: s.pop("head.bias"), "needs head.fc.bias, which the checkpoint lacks"),
        (lambda s: s.__setitem__("stages.1.0.pwconv1.weight", torch.zeros(700, 192)),
         "stages.1.0.pwconv1.weight (as stages.1.blocks.0.mlp.fc1.weight) has shape (700, 192) but the model needs (768, 192)"),
        (lambda s: s.__setitem__("stages.2.4.dwconv.P", s["stages.2.4.dwconv.P"] + 1.0),
         "stages.2.blocks.0.conv_dw.P and stages.2.blocks.4.conv_dw.P differ"),
        (lambda s: s.update({"head.weight": torch.zeros(1000, 768), "head.bias": torch.zeros(1000)}), "the classifier has 1000 outputs"),
    ],
    ids=["left-over", "missing", "shape", "unshared-positions", "classes"],
)
def test_keys_that_do_not_fit_stop_with_one_line(released, tmp_path, capsys, edit, message):
    path = _broken(released, tmp_path, "convnext_dcls_audio_tiny", edit)
    rc, out, err = _run(capsys, path, "--out", tmp_path / "r")
    assert rc == 1 and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "r").exists()


def test_arch_option(released, tmp_path, capsys):
    path, _ = released["convformer_dcls_audio_s18"]
    rc, out, err = _run(capsys, path, "--out", tmp_path / "a", "--arch", "convformer_s18_dcls_audio")
    assert rc == 0 and "(as given)" in out
    for arch, message in [
        ("convnext_tiny_dcls_audio", "cannot load into convnext_tiny_dcls_audio (not a ConvFormerAudio)"),
        ("convformer_s18_audio", "has shape (128, 1, 26) but the model needs (128, 1, 7, 7); the checkpoint has a DCLS layer"),
        ("resnet50", "unknown architecture 'resnet50'"),
    ]:
        rc, out, err = _run(capsys, path, "--out", tmp_path / "b", "--arch", arch)
        assert rc == 1 and message in err and err.count("\n") == 1


def test_cli_usage_and_bad_files(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        import_checkpoint.main(["--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    assert "Examples" in help_text and "--list" in help_text and "zenodo.org/record/8370979" in help_text
    with pytest.raises(SystemExit) as e:
        import_checkpoint.main(["some.pth"])  # no --out
    assert e.value.code == 2
    capsys.readouterr()
    rc, out, _ = _run(capsys, "--list")
    assert rc == 0 and out.count("zenodo.org/record/8370979/files/") == 4 and "45.52" in out
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    for src, message in [(tmp_path / "missing.pth", "no such file"), (text, "not a readable PyTorch checkpoint"), (tmp_path, "is a folder")]:
        rc, _, err = _run(capsys, src, "--out", tmp_path / "r")
        assert rc == 1 and message in err and err.count("\n") == 1
    bare = tmp_path / "weird.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, bare)
    rc, _, err = _run(capsys, bare, "--out", tmp_path / "r")
    assert rc == 1 and "not in a layout DCLS-Audio writes" in err
    rc, _, err = _run(capsys, bare, "--out", tmp_path, "--name", "bad name!")
    assert rc == 1 and "release name 'bad name!'" in err
