"""The audio model families: registry sweep, exact sizes, DCLS wiring, inference form.

Shapes are kept short (128×128 log-mel) wherever the 1001-frame length is not
the point; the stem test uses the full 1×128×1001 clip. Each model is built
once (``_pristine``) and deep-copied by the tests that change it.
"""
import copy
import functools
import re
from pathlib import Path

import pytest
import timm
import torch
from torch import nn
from timm.layers import LayerNorm2d
from timm.models.fastvit import RepConditionalPosEnc

import audio_dcls  # noqa: F401  (registers the models)
from audio_dcls.features import LogMelConfig
from audio_dcls.layers import Dcls2d, dcls_param_groups, fold_dcls, positions_are_shared
from audio_dcls.models import (
    audio_model_pairs,
    dcls_counterpart,
    dcls_stage_layers,
    list_audio_models,
    prepare_for_inference,
    reparameterize_rep_cpe,
)
from audio_dcls.models._dcls_swap import DclsSpec, dcls_from_depthwise

ALL = list_audio_models()
DCLS = list_audio_models(dcls=True)
SMALL = [n for n in ALL if "_atto_" in n or "_t8_" in n]
SHORT = (1, 128, 128)  # channels, mel bands, frames

EXPECTED_NAMES = {
    "convnext_tiny_audio", "convnext_tiny_dcls_audio",
    "convformer_s18_audio", "convformer_s18_dcls_audio",
    "fastvit_sa24_audio", "fastvit_sa24_dcls_audio",
    "convnext_atto_audio", "convnext_atto_dcls_audio",
    "convformer_atto_audio", "convformer_atto_dcls_audio",
    "fastvit_t8_audio", "fastvit_t8_dcls_audio",
}

# Unique parameters with 527 classes (DCLS saves 23 weights per channel-layer
# and adds 4 × 26 × C shared positions/Σ per stage).
EXACT_COUNTS = {
    "convnext_tiny_audio": 28_223_855,
    "convnext_tiny_dcls_audio": 28_221_263,
    "convformer_s18_audio": 25_797_847,
    "convformer_s18_dcls_audio": 25_781_207,
    "fastvit_sa24_audio": 21_064_015,
    "fastvit_sa24_dcls_audio": 21_016_655,
}

# Layer-scale arguments that make every residual branch count at init, so
# that equivalence tests see the DCLS/reparameterised paths.
FULL_LAYER_SCALE = {
    "convnext": dict(ls_init_value=1.0),
    "convformer": {},  # no layer scale by default: branches already count fully
    "fastvit": dict(layer_scale_init_value=1.0),
}


@pytest.fixture(autouse=True, scope="module")
def _module_setup(one_thread):
    yield
    _pristine.cache_clear()  # free the built models for later test modules


def _family(name):
    return name.split("_")[0]


@functools.lru_cache(maxsize=None)
def _pristine(name):
    """One build per model, with layer scales at 1 so every residual path counts."""
    return _create(name, **FULL_LAYER_SCALE[_family(name)])


def _fresh_copy(name):
    model = copy.deepcopy(_pristine(name))
    _randomise(model)
    return model


def _create(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model(name, **kwargs)


def _input(batch=2, shape=SHORT, seed=1):
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


def _unique_count(model):
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@torch.no_grad()
def _randomise(model, seed=2):
    """Non-trivial BatchNorm statistics and DCLS positions/Σ spread over the grid."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    for layers in dcls_stage_layers(model):
        lim = layers[0].dilated_kernel_size[0] // 2
        layers[0].P.copy_((torch.rand(layers[0].P.shape, generator=g) * 2 - 1) * lim)
        layers[0].SIG.copy_(torch.rand(layers[0].SIG.shape, generator=g))


def _stage_of(name):
    return int(re.match(r"stages\.(\d+)\.", name).group(1))


# -- registry -----------------------------------------------------------------
def test_registered_names_and_pairs():
    assert set(ALL) == EXPECTED_NAMES
    assert len(DCLS) == 6
    pairs = audio_model_pairs()
    assert len(pairs) == 6 and all(b == dcls_counterpart(a) for a, b in pairs)
    assert set(sum(map(list, pairs), [])) == EXPECTED_NAMES
    with pytest.raises(ValueError):
        dcls_counterpart("convnext_tiny_dcls_audio")


@pytest.mark.parametrize("name", ALL)
def test_pretrained_cfg_records_audio_input(name):
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    model = _pristine(name)
    for c in (cfg, model.pretrained_cfg):
        assert tuple(c["input_size"]) == (1, 128, 1001)
        assert c["num_classes"] == 527
        assert c["front_end"] == LogMelConfig().to_dict()
        assert c["label_set"] == "audioset-527"
        assert not c.get("url") and not c.get("hf_hub_id")
    label_file = Path(audio_dcls.__file__).parent / "data" / cfg["label_file"]
    assert len(label_file.read_text().strip().splitlines()) == 1 + cfg["num_classes"]
    assert model.num_classes == 527 and model.in_chans == 1
    assert model.dcls == name.endswith("_dcls_audio")


def test_pretrained_true_is_refused():
    with pytest.raises(ValueError, match="pretrained=True is not supported"):
        timm.create_model("convnext_atto_dcls_audio", pretrained=True)


@pytest.mark.parametrize("name", list(EXACT_COUNTS))
def test_exact_parameter_counts(name):
    model = _pristine(name)
    assert _unique_count(model) == EXACT_COUNTS[name]
    # model.parameters() lists a shared P/Σ once.
    assert sum(p.numel() for p in model.parameters()) == EXACT_COUNTS[name]


# -- stem ---------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in SMALL if "_dcls_" in n])
def test_stem_maps_full_clip_to_64x62(name):
    model = copy.deepcopy(_pristine(name)).eval()
    stem_out = {}
    model.stem.register_forward_hook(lambda m, i, o: stem_out.setdefault("y", o))
    with torch.no_grad():
        logits = model(_input(1, (1, 128, 1001)))
    assert logits.shape == (1, 527)
    assert stem_out["y"].shape[-2:] == (64, 62)
    first = model.get_submodule(model.pretrained_cfg["first_conv"])
    assert isinstance(first, nn.Conv2d)
    assert (first.in_channels, first.kernel_size, first.stride) == (1, (2, 16), (2, 16))
    # ConvNeXt keeps the stem bias (and its LayerNorm); the others have none.
    assert (first.bias is not None) == (_family(name) == "convnext")
    if _family(name) == "convnext":
        assert isinstance(model.stem[1], LayerNorm2d)
    if _family(name) == "convformer":
        assert isinstance(model.stem.norm, LayerNorm2d)
    if _family(name) == "fastvit":
        assert model.stem is first  # the MobileOne stem is gone entirely


# -- registry sweep: forward, gradients, state dict, channels_last -------------
@pytest.mark.parametrize("name", ALL)
def test_forward_and_every_parameter_gets_a_gradient(name):
    model = _fresh_copy(name).train()
    x = _input()
    logits = model(x)
    assert logits.shape == (2, 527)
    assert torch.isfinite(logits).all()
    feats = model.forward_features(x)
    assert feats.dim() == 4
    torch.testing.assert_close(model.forward_head(feats), logits, atol=1e-5, rtol=1e-5)
    # Same loss as the training pipeline: sigmoid belongs to the loss.
    target = torch.rand(logits.shape, generator=torch.Generator().manual_seed(3))
    nn.functional.binary_cross_entropy_with_logits(logits, target).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    for layers in dcls_stage_layers(model):
        assert layers[0].P.grad.abs().sum() > 0 and layers[0].SIG.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip(name):
    src = _fresh_copy(name)
    dst = _create(name, seed=1)  # default construction
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=True)
    assert not missing and not unexpected
    x = _input(1)
    with torch.no_grad():
        torch.testing.assert_close(dst.eval()(x), src.eval()(x), atol=0, rtol=0)
    for layers in dcls_stage_layers(dst):  # loading keeps the tying
        assert all(positions_are_shared(layers[0], l) for l in layers)


@pytest.mark.parametrize("name", ALL)
def test_channels_last_matches(name):
    model = _fresh_copy(name).eval()
    x = _input()
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


# -- DCLS wiring --------------------------------------------------------------
@pytest.mark.parametrize("name", DCLS)
def test_positions_shared_within_a_stage_only(name):
    model = _pristine(name)
    dcls = [(n, m) for n, m in model.named_modules() if isinstance(m, Dcls2d)]
    by_stage = {}
    for n, m in dcls:
        by_stage.setdefault(_stage_of(n), []).append((n, m))
    assert sorted(by_stage) == [0, 1, 2, 3]
    for stage, layers in by_stage.items():
        owner = layers[0][1]
        assert all(positions_are_shared(owner, m) for _, m in layers)
        assert all(m.weight is not owner.weight for _, m in layers[1:])
    owners = [layers[0][1] for layers in by_stage.values()]
    assert len({id(o.P) for o in owners}) == 4 and len({id(o.SIG) for o in owners}) == 4
    assert len(dcls_stage_layers(model)) == 4
    for _, m in dcls:
        assert m.is_depthwise() and m.kernel_count == 26 and m.dilated_kernel_size == (23, 23)
        assert m.padding == (11, 11) and m.version == "gauss"


@pytest.mark.parametrize("name", [n for n in SMALL if "_dcls_" in n])
def test_stage_kernels_built_together_once_per_forward(name):
    """The DCLS layers of a stage build their kernels as one group, once per forward: same numbers."""
    model = copy.deepcopy(_pristine(name)).train()
    calls = []
    for layers in dcls_stage_layers(model):
        assert all(m.shared_kernel_cache is layers[0].shared_kernel_cache is not None for m in layers)
        # Every layer has its own builder object; count calls on all of them.
        for m in layers:
            m.kernel_builder.profiles = (lambda orig: lambda *a, **k: calls.append(1) or orig(*a, **k))(m.kernel_builder.profiles)
    x = torch.randn(2, 1, 128, 200, generator=torch.Generator().manual_seed(0))
    out = model(x)
    assert len(calls) == len(dcls_stage_layers(model)) == 4
    # Without the caches every layer builds its own kernel: same output and gradients.
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if isinstance(m, Dcls2d):
            m.shared_kernel_cache = None
    ref = plain(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(out, [m.P for m in dict.fromkeys(l[0] for l in dcls_stage_layers(model))], g)
    want = torch.autograd.grad(ref, [m.P for m in dict.fromkeys(l[0] for l in dcls_stage_layers(plain))], g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name,expected", [
    ("convnext_tiny_dcls_audio", {"conv_dw": 18}),
    ("convformer_s18_dcls_audio", {"token_mixer.dwconv": 18}),
    ("fastvit_sa24_dcls_audio", {"mlp.conv.conv": 24, "pos_emb.pos_enc": 1}),
])
def test_every_depthwise_7x7_swapped_and_nothing_else(name, expected):
    model = _pristine(name)
    dcls = [n for n, m in model.named_modules() if isinstance(m, Dcls2d)]
    for suffix, count in expected.items():
        assert sum(n.endswith(suffix) for n in dcls) == count
    assert len(dcls) == sum(expected.values())
    # No depthwise 7×7 stride-1 conv is left; FastViT keeps its 3×3 RepMixer
    # convs and its strided/grouped patch-embedding convs.
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1 and m.stride == (1, 1):
            assert m.kernel_size != (7, 7), n
    if _family(name) == "fastvit":
        pos = model.stages[3].pos_emb
        assert isinstance(pos, RepConditionalPosEnc) and positions_are_shared(pos.pos_enc, model.stages[3].blocks[0].mlp.conv.conv)
        assert pos.pos_enc.bias is not None  # bias as the original RepCPE conv
        assert isinstance(model.stages[3].blocks[0].mlp.conv.bn, nn.BatchNorm2d)
        assert model.stages[0].blocks[0].token_mixer.mixer.conv_kxk[0].conv.kernel_size == (3, 3)
        assert model.stages[1].downsample.proj[0].large_conv.conv.stride == (2, 2)


@pytest.mark.parametrize("name", ["convnext_tiny_dcls_audio", "convformer_s18_dcls_audio", "fastvit_sa24_dcls_audio"])
def test_dcls_weights_trunc_normal_init(name):
    model = _pristine(name)
    for layers in dcls_stage_layers(model):
        w = torch.cat([l.weight.detach().flatten() for l in layers])
        assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002
        for l in layers:
            assert l.bias is None or torch.count_nonzero(l.bias) == 0
        p = layers[0].P.detach()  # the DCLS layer's own position init: N(0, 0.5)
        assert 0.4 < p.std().item() < 0.6
        assert torch.all(layers[0].SIG == 0.23)


def test_param_groups_pick_shared_positions_once():
    model = _create("fastvit_t8_dcls_audio")
    groups = {g["group"]: g for g in dcls_param_groups(model, lr=1e-3, weight_decay=0.05)}
    positions = groups["positions"]["params"]
    assert len(positions) == 2 * 4  # one P and one Σ per stage
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))


def test_timm_kwargs_are_honoured():
    m = _create("convnext_atto_dcls_audio", num_classes=10, in_chans=2, drop_path_rate=0.1, ls_init_value=0.5)
    assert m(_input(2, (2, 128, 128))).shape == (2, 10)
    assert torch.all(m.stages[1].blocks[0].gamma == 0.5)
    assert m.stages[3].blocks[1].drop_path.drop_prob > 0
    m = _create("convformer_atto_dcls_audio", num_classes=7, layer_scale_init_values=0.25, drop_path_rate=0.1)
    assert m(_input(1, (1, 128, 128))).shape == (1, 7)
    assert torch.all(m.stages[0].blocks[0].layer_scale1.scale == 0.25)
    m = _create("fastvit_t8_dcls_audio", num_classes=5, layer_scale_init_value=0.125, drop_path_rate=0.1)
    assert m(_input(1, (1, 128, 128))).shape == (1, 5)
    assert torch.all(m.stages[0].blocks[0].layer_scale.gamma == 0.125)
    m = _create("convnext_atto_audio", dcls_kernel_count=9, dcls_dilated_kernel_size=11, dcls=True)
    layer = m.stages[0].blocks[0].conv_dw
    assert isinstance(layer, Dcls2d) and layer.kernel_count == 9 and layer.padding == (5, 5)


@pytest.mark.parametrize("name", [n for n in SMALL if "_dcls_" in n])
def test_features_only(name):
    model = _create(name, features_only=True)
    feats = model(_input(1))
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    assert feats[0].shape[-2:] == (64, 8)  # 128×128 in, the (2, 16) stem
    assert model.feature_info.reduction() == [16, 32, 64, 128]  # time-axis strides
    assert len(dcls_stage_layers(model)) == 4


# -- inference form -----------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_prepare_for_inference_keeps_outputs(name):
    model = _fresh_copy(name).eval()
    x = _input()
    with torch.no_grad():
        ref = model(x)
    prepared = prepare_for_inference(model, inplace=False)
    assert any(isinstance(m, Dcls2d) for m in model.modules()) == name.endswith("_dcls_audio")  # source untouched
    assert not prepared.training
    assert not any(isinstance(m, Dcls2d) for m in prepared.modules())
    assert not any(hasattr(m, "reparam_conv") and m.reparam_conv is None for m in prepared.modules())
    with torch.no_grad():
        out = prepared(x)
        assert ref.abs().max() > 0.1  # the paths under test contribute
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
        prepare_for_inference(prepared)  # idempotent
        torch.testing.assert_close(prepared(x), out, atol=0, rtol=0)
    # The 23×23 depthwise convs see NHWC maps (oneDNN's fast layout on the CPU).
    layouts = []
    for m in prepared.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (23, 23):
            m.register_forward_pre_hook(lambda m, i: layouts.append(i[0].is_contiguous(memory_format=torch.channels_last)))
    with torch.no_grad():
        prepared(x)
    assert all(layouts) and bool(layouts) == name.endswith("_dcls_audio")
    if name == "fastvit_sa24_dcls_audio":
        rep = prepared.stages[3].pos_emb.reparam_conv
        assert rep.kernel_size == (23, 23) and rep.padding == (11, 11)


def test_rep_cpe_identity_at_centre_of_folded_dcls_kernel():
    torch.manual_seed(0)
    cpe = RepConditionalPosEnc(16, spatial_shape=(7, 7))
    cpe.pos_enc = dcls_from_depthwise(cpe.pos_enc, DclsSpec())
    with torch.no_grad():
        cpe.pos_enc.P.uniform_(-11, 11)
        cpe.pos_enc.bias.normal_()
    cpe.eval()
    x = torch.randn(2, 16, 9, 21)
    with torch.no_grad():
        ref = cpe(x)
        cpe.pos_enc = fold_dcls(cpe.pos_enc)
        folded = cpe.pos_enc.weight.clone()
        reparameterize_rep_cpe(cpe)
        out = cpe(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    delta = cpe.reparam_conv.weight - folded  # (16, 1, 23, 23)
    expected = torch.zeros_like(delta)
    expected[:, 0, 11, 11] = 1
    torch.testing.assert_close(delta, expected, atol=1e-6, rtol=0)
    assert not hasattr(cpe, "pos_enc")


def test_rep_cpe_refuses_unfolded_dcls():
    cpe = RepConditionalPosEnc(8, spatial_shape=(7, 7))
    cpe.pos_enc = dcls_from_depthwise(cpe.pos_enc, DclsSpec())
    with pytest.raises(TypeError, match="fold"):
        reparameterize_rep_cpe(cpe)
