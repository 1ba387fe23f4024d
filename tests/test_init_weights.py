"""audio_dcls.convert.load_init_weights: ImageNet checkpoints in every upstream layout start our audio models.

ImageNet checkpoints are built with random weights: facebookresearch/ConvNeXt
(plain and DCLS), sail-sg/metaformer and apple/ml-fastvit from the upstream key
layouts (tests/dcls_audio_state_dicts.json with the RGB stem and 1000-class
head), timm's from timm's own models. Everything but the audio stem and the
classifier must load, exactly.
"""
from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

import audio_dcls.models  # noqa: F401  (registers our models)
from audio_dcls.convert import (
    PAPER_IMAGENET_INIT,
    CheckpointError,
    InitFormat,
    default_init_formats,
    detect_layout,
    load_init_weights,
    rename_state,
)

from local_http import FileServer
from upstream_checkpoints import layouts, random_state

LAYOUTS = layouts()


@pytest.fixture(autouse=True, scope="module")
def _threads(one_thread):
    yield


def _entries(name, overrides=(), extra=(), tied=True):
    entries = [dict(e) for e in LAYOUTS[name]["state_dict"]]
    if not tied:
        for e in entries:
            e.pop("same_tensor_as", None)
    shapes = dict(overrides)
    entries = [dict(e, shape=shapes.get(e["key"], e["shape"])) for e in entries if shapes.get(e["key"], e["shape"]) is not None]
    return entries + [{"key": k, "shape": s} for k, s in extra]


def fb_convnext(dcls: bool, tied: bool = True, seed: int = 0):
    over = {"downsample_layers.0.0.weight": [96, 3, 4, 4], "head.weight": [1000, 768], "head.bias": [1000]}
    if not dcls:
        for e in LAYOUTS["convnext_dcls_audio_tiny"]["state_dict"]:
            if e["key"].endswith("dwconv.weight"):
                over[e["key"]] = [e["shape"][0], 1, 7, 7]
            elif e["key"].endswith(("dwconv.P", "dwconv.SIG")):
                over[e["key"]] = None
    return random_state(_entries("convnext_dcls_audio_tiny", over, tied=tied), seed)


def sail_convformer(seed: int = 0):
    over = {"downsample_layers.0.conv.weight": [64, 3, 7, 7], "head.fc2.weight": [1000, 2048], "head.fc2.bias": [1000]}
    return random_state(_entries("convformer_audio_s18", over, extra=[("downsample_layers.0.conv.bias", [64])]), seed)


def apple_fastvit(seed: int = 0):
    stem = [("patch_embed.0.rbr_conv.0.conv.weight", [64, 3, 3, 3])] + [
        (f"patch_embed.0.rbr_conv.0.bn.{n}", [64]) for n in ("weight", "bias", "running_mean", "running_var")
    ]
    over = {"patch_embed.weight": None, "head.weight": [1000, 1024], "head.bias": [1000]}
    return random_state(_entries("fastvit_dcls_audio_sa24", over, extra=stem), seed)


def _check(model, before, upstream, report, fmt, stem, head):
    """Everything but ``stem`` and ``head`` (key prefixes) holds the checkpoint's tensor; those two are untouched."""
    assert report.format == fmt
    state = model.state_dict()
    mapping = {m.source_key: m.key for m in rename_state(detect_layout(upstream), upstream, state)}
    fresh = [k for k in state if k.startswith((stem, head))]
    assert fresh and sorted(k for k, _ in report.kept) == sorted(fresh)
    for key in fresh:
        assert torch.equal(state[key], before[key]), key
    for src, key in mapping.items():
        if key.startswith((stem, head)):
            assert (src, f"{'audio stem' if key.startswith(stem) else 'classifier'} (fresh init)") in report.skipped
            continue
        assert torch.equal(state[key], upstream[src].reshape(state[key].shape)), key
    loaded = {k for _, k in report.loaded}
    assert loaded == set(state) - set(fresh)


def _init(arch, upstream, path, **kwargs):
    model = timm.create_model(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_init_weights(model, path, **kwargs)
    return model, before, report


@pytest.mark.parametrize("dcls", [False, True], ids=["plain", "dcls-gauss"])
def test_facebookresearch_convnext(dcls, tmp_path):
    upstream = fb_convnext(dcls)
    path = tmp_path / "convnext_tiny_1k_224_ema.pth"
    torch.save({"model": upstream, "epoch": 299}, path)
    arch = "convnext_tiny_dcls_audio" if dcls else "convnext_tiny_audio"
    model, before, report = _init(arch, upstream, path)
    _check(model, before, upstream, report, "facebookresearch/ConvNeXt", "stem.0.", "head.fc.")
    if dcls:
        assert report.shared_copies == 28  # (2 + 2 + 8 + 2) repeated copies of P and of SIG
        assert model.stages[2].blocks[0].conv_dw.P is model.stages[2].blocks[8].conv_dw.P
    assert model.stem[1].weight.equal(upstream["downsample_layers.0.1.weight"])  # the stem's norm does load
    json.dumps(report.to_dict())
    text = report.summary()
    assert "audio stem (fresh init): stem.0.weight, stem.0.bias" in text and "classifier (fresh init)" in text


def test_dcls_imagenet_with_positions_per_block(tmp_path):
    upstream = fb_convnext(dcls=True, tied=False)
    path = tmp_path / "untied.pth"
    torch.save({"model": upstream}, path)
    model = timm.create_model("convnext_tiny_dcls_audio")
    with pytest.raises(CheckpointError) as e:
        load_init_weights(model, path)
    assert "stages.0.blocks.0.conv_dw.P and stages.0.blocks.1.conv_dw.P differ" in str(e.value) and "'last'" in str(e.value)
    load_init_weights(model, path, unshared_positions="last")
    assert model.stages[2].blocks[4].conv_dw.P.equal(upstream["stages.2.8.dwconv.P"])  # the last block's copy
    assert model.stages[2].blocks[0].conv_dw.SIG.equal(upstream["stages.2.8.dwconv.SIG"])


def test_plain_convnext_into_dcls_model_stops_unless_asked(tmp_path):
    upstream = fb_convnext(dcls=False)
    path = tmp_path / "plain.pth"
    torch.save({"model": upstream}, path)
    model = timm.create_model("convnext_tiny_dcls_audio")
    with pytest.raises(CheckpointError, match=r"stages.0.0.dwconv.weight .*\(96, 1, 7, 7\) but the model needs \(96, 1, 26\); the checkpoint has a plain conv"):
        load_init_weights(model, path)
    p_before = model.stages[0].blocks[0].conv_dw.P.detach().clone()
    report = load_init_weights(model, path, fresh_dcls=True)
    assert model.stages[0].blocks[0].conv_dw.P.equal(p_before)
    assert model.stages[0].blocks[0].conv_dw.bias.equal(upstream["stages.0.0.dwconv.bias"])
    assert sum(why.startswith("DCLS layer kept fresh") for _, why in report.kept) == 18 * 3


def test_sail_sg_convformer(tmp_path):
    upstream = sail_convformer()
    path = tmp_path / "convformer_s18.pth"
    torch.save(upstream, path)  # sail-sg publishes bare state dicts
    model, before, report = _init("convformer_s18_audio", upstream, path)
    _check(model, before, upstream, report, "sail-sg/metaformer", "stem.conv.", "head.fc.fc2.")
    assert model.head.fc.fc1.weight.equal(upstream["head.fc1.weight"])  # the MLP head's hidden layer loads


def test_apple_fastvit(tmp_path):
    upstream = apple_fastvit()
    path = tmp_path / "fastvit.pth"
    torch.save({"state_dict": upstream}, path)
    model, before, report = _init("fastvit_sa24_dcls_audio", upstream, path)
    _check(model, before, upstream, report, "apple/ml-fastvit", "stem.", "head.fc.")


@pytest.mark.parametrize(
    "timm_name,arch,stem,head,suffix",
    [
        ("convnext_tiny", "convnext_tiny_audio", "stem.0.", "head.fc.", ".safetensors"),
        ("convformer_s18", "convformer_s18_audio", "stem.conv.", "head.fc.fc2.", ".pth"),
        ("fastvit_sa24", "fastvit_sa24_audio", "stem.", "head.fc.", ".pth"),
    ],
)
def test_timm_checkpoints(timm_name, arch, stem, head, suffix, tmp_path):
    upstream = {k: v.contiguous() for k, v in timm.create_model(timm_name).state_dict().items()}
    path = tmp_path / f"{timm_name}{suffix}"
    if suffix == ".safetensors":
        save_file(upstream, str(path))
    else:
        torch.save({"state_dict": upstream, "epoch": 300}, path)  # a timm training checkpoint
    model, before, report = _init(arch, upstream, path)
    _check(model, before, upstream, report, detect_layout(upstream).name, stem, head)
    assert report.format.startswith("timm ")


def test_init_from_a_url(tmp_path):
    upstream = {k: v.contiguous() for k, v in timm.create_model("convnext_tiny").state_dict().items()}
    path = tmp_path / "convnext_tiny.safetensors"
    save_file(upstream, str(path))
    with FileServer(path.read_bytes(), name=path.name) as server:
        model, before, report = _init("convnext_tiny_audio", upstream, server.url, cache_dir=tmp_path / "cache")
    assert report.source == server.url and len(report.sha256) == 64
    _check(model, before, upstream, report, "timm ConvNeXt", "stem.0.", "head.fc.")


def test_wrong_family_unknown_format_and_non_strict(tmp_path):
    path = tmp_path / "convformer.pth"
    torch.save(sail_convformer(), path)
    with pytest.raises(CheckpointError, match="a sail-sg/metaformer checkpoint cannot initialise ConvNeXtAudio"):
        load_init_weights(timm.create_model("convnext_tiny_audio"), path)
    odd = tmp_path / "odd.pth"
    torch.save({"encoder.layer.weight": torch.zeros(2)}, odd)
    for src in (odd, tmp_path):
        with pytest.raises(CheckpointError, match="format not recognised \\(known: facebookresearch/ConvNeXt, sail-sg/metaformer"):
            load_init_weights(timm.create_model("convnext_tiny_audio"), src)

    upstream = fb_convnext(dcls=False)
    upstream["stages.0.0.extra.weight"] = torch.zeros(3)
    del upstream["stages.3.2.gamma"]
    extra = tmp_path / "extra.pth"
    torch.save({"model": upstream}, extra)
    with pytest.raises(CheckpointError, match="stages.0.0.extra.weight .* has no place in the model"):
        load_init_weights(timm.create_model("convnext_tiny_audio"), extra)
    report = load_init_weights(timm.create_model("convnext_tiny_audio"), extra, strict=False)
    assert ("stages.0.0.extra.weight", "not in the model") in report.skipped
    assert ("stages.3.blocks.2.gamma", "not in the checkpoint") in report.kept


def test_the_registry_takes_new_formats(tmp_path):
    """How the fine-tuning work adds e.g. release folders: a format recognising folders, registered first."""
    model = timm.create_model("convnext_atto_audio")
    wanted = {k: torch.full_like(v, 0.5) for k, v in model.state_dict().items() if not k.startswith("head.fc.")}

    def read(source, m):
        from audio_dcls.convert import MappedTensor

        return [MappedTensor(k, k, v) for k, v in wanted.items()]

    formats = default_init_formats()
    formats.register(InitFormat("test folder", lambda s: s.path.is_dir(), read, lambda m: {"head.fc.": "classifier"}), first=True)
    assert formats.names()[0] == "test folder"
    report = load_init_weights(model, tmp_path, formats=formats)
    assert report.format == "test folder" and model.stem[0].weight.eq(0.5).all()
    assert [k for k, _ in report.kept] == ["head.fc.weight", "head.fc.bias"]


def test_paper_recipes_name_their_imagenet_files():
    assert PAPER_IMAGENET_INIT["convnext_tiny_dcls_audio"]["file"] == "convnext_dcls_gauss_tiny_1k_224_ema.pth"
    assert PAPER_IMAGENET_INIT["fastvit_sa24_dcls_audio"] is None
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "configs"
    for config, file in [("convnext_tiny_dcls.yaml", "convnext_dcls_gauss_tiny_1k_224_ema.pth"), ("convnext_tiny.yaml", "convnext_tiny_1k_224_ema.pth"),
                         ("convformer_s18.yaml", "convformer_s18.pth"), ("convformer_s18_dcls.yaml", "convformer_s18.pth"),
                         ("fastvit_sa24_dcls.yaml", "No ImageNet pretraining")]:
        assert file in (configs / config).read_text(), config
