"""DCLS layers: parity with the reference package, and our own guarantees."""
import copy
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from audio_dcls.layers import (
    Dcls1d,
    Dcls2d,
    DclsKernel,
    build_dcls_kernel,
    dcls_param_groups,
    fold_dcls,
    positions_are_shared,
    share_positions,
    share_kernel_build,
)
from audio_dcls.ops import DepthwiseConv2dCPU, conv2d, depthwise_conv2d_cpu, fast_depthwise
from audio_dcls.ops.depthwise_cpu import fast_path_applies

logging.getLogger().setLevel(logging.ERROR)  # the oracle warns about its CUDA extension
from DCLS.construct import modules as oracle  # noqa: E402 - the reference dcls 0.1.1, in the test extra

VERSIONS = [("gauss", "gauss"), ("bilinear", "v1"), ("triangle", "max")]


def _copy_from_oracle(ours, ref, randomise_sigma=True):
    with torch.no_grad():
        ours.weight.copy_(ref.weight)
        ours.P.copy_(ref.P)
        if ref.bias is not None:
            ours.bias.copy_(ref.bias)
        if ref.SIG is not None:
            if randomise_sigma:  # the init is constant; test a spread of Σ
                ref.SIG.uniform_(-0.6, 0.6)
            ours.SIG.copy_(ref.SIG)


def _grads(out, tensors, seed=0):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad(out, tensors, g)


def _learnables(layer):
    return [t for t in (layer.weight, layer.P, layer.SIG) if t is not None]


# Square dilated sizes: the oracle is right there. Depthwise and grouped cases.
CASES_2D = [
    dict(in_channels=8, out_channels=8, kernel_count=5, dilated_kernel_size=7, padding=3, groups=8),
    dict(in_channels=4, out_channels=6, kernel_count=3, dilated_kernel_size=5, padding=1, groups=2, stride=2),
    dict(in_channels=6, out_channels=6, kernel_count=26, dilated_kernel_size=23, padding=11, groups=6),
]


@pytest.mark.parametrize("version,ref_version", VERSIONS)
@pytest.mark.parametrize("case", CASES_2D)
def test_dcls2d_matches_oracle(version, ref_version, case):
    torch.manual_seed(0)
    kw = dict(case)
    ref = oracle.Dcls2d(kw.pop("in_channels"), kw.pop("out_channels"), kernel_count=kw.pop("kernel_count"), version=ref_version, **kw)
    ours = Dcls2d(case["in_channels"], case["out_channels"], case["kernel_count"], case["dilated_kernel_size"],
                  stride=case.get("stride", 1), padding=case["padding"], groups=case["groups"], version=version)
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert a.shape == b.shape
    _copy_from_oracle(ours, ref)
    torch.testing.assert_close(ours.construct_kernel(), ref.DCK(ref.weight, ref.P, ref.SIG), atol=1e-5, rtol=0)

    x = torch.randn(2, case["in_channels"], 13, 17, requires_grad=True)
    y_ref, y = ref(x), ours(x)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=0)
    for g, g_ref in zip(_grads(y, [x, *_learnables(ours)]), _grads(y_ref, [x, *_learnables(ref)])):
        torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("version,ref_version", VERSIONS)
def test_dcls1d_matches_oracle(version, ref_version):
    torch.manual_seed(1)
    ref = oracle.Dcls1d(4, 6, kernel_count=4, dilated_kernel_size=9, padding=4, groups=2, version=ref_version)
    ours = Dcls1d(4, 6, 4, 9, padding=4, groups=2, version=version)
    _copy_from_oracle(ours, ref)
    torch.testing.assert_close(ours.construct_kernel(), ref.DCK(ref.weight, ref.P, ref.SIG), atol=1e-5, rtol=0)
    x = torch.randn(3, 4, 21, requires_grad=True)
    y_ref, y = ref(x), ours(x)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=0)
    for g, g_ref in zip(_grads(y, [x, *_learnables(ours)]), _grads(y_ref, [x, *_learnables(ref)])):
        torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)

    # Depthwise 1-D goes through the fast route; still the oracle's numbers.
    ref = oracle.Dcls1d(5, 5, kernel_count=3, dilated_kernel_size=11, padding=5, groups=5, version=ref_version)
    ours = Dcls1d(5, 5, 3, 11, padding=5, groups=5, version=version)
    _copy_from_oracle(ours, ref)
    x = torch.randn(2, 5, 30, requires_grad=True)
    y_ref, y = ref(x), ours(x)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=0)
    for g, g_ref in zip(_grads(y, [x, *_learnables(ours)]), _grads(y_ref, [x, *_learnables(ref)])):
        torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("version,ref_version", VERSIONS)
@pytest.mark.parametrize("cls_name", ["Dcls1d", "Dcls2d"])
def test_init_distributions_match_oracle(version, ref_version, cls_name):
    torch.manual_seed(0)
    ours = getattr(__import__("audio_dcls.layers", fromlist=[cls_name]), cls_name)(64, 64, 26, 23, padding=11, groups=1, version=version)
    ref = getattr(oracle, cls_name)(64, 64, kernel_count=26, dilated_kernel_size=23, padding=11, version=ref_version)
    bound = 1 / math.sqrt(64 * 26)  # kaiming_uniform(a=√5) on (O, I, K) ⇒ U(±1/√fan_in)
    for layer in (ours, ref):
        assert layer.weight.abs().max() <= bound + 1e-7
        assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)
        assert layer.bias.abs().max() <= bound + 1e-7
        assert layer.P.abs().max() <= 11
        assert layer.P.mean().item() == pytest.approx(0.0, abs=0.01)
        assert layer.P.std().item() == pytest.approx(0.5, rel=0.03)
    if ref.SIG is None:
        assert ours.SIG is None
    else:
        torch.testing.assert_close(ours.SIG, ref.SIG)
        assert ours.SIG.flatten()[0].item() == pytest.approx(0.23 if version == "gauss" else 0.0)


def _per_tap_kernel(weight, P, SIG, dilated, version):
    """Direct formula: one tap at a time, one grid cell at a time."""
    dh, dw = dilated
    out_c, in_c, taps = weight.shape
    kernel = torch.zeros(out_c, in_c, dh, dw, dtype=torch.float64)
    ys = torch.arange(dh, dtype=torch.float64).view(-1, 1)
    xs = torch.arange(dw, dtype=torch.float64).view(1, -1)
    for o in range(out_c):
        for i in range(in_c):
            for k in range(taps):
                cx = P[0, o, i, k].double() + dw // 2  # coordinate 0: width axis
                cy = P[1, o, i, k].double() + dh // 2
                if version == "gauss":
                    sx, sy = SIG[0, o, i, k].abs().double() + 0.27, SIG[1, o, i, k].abs().double() + 0.27
                    g = torch.exp(-0.5 * ((xs - cx) / sx) ** 2 - 0.5 * ((ys - cy) / sy) ** 2)
                elif version == "bilinear":
                    g = (1 - (xs - cx).abs()).clamp(min=0) * (1 - (ys - cy).abs()).clamp(min=0)
                else:
                    sx, sy = SIG[0, o, i, k].abs().double() + 1, SIG[1, o, i, k].abs().double() + 1
                    g = (sx - (xs - cx).abs()).clamp(min=0) * (sy - (ys - cy).abs()).clamp(min=0)
                kernel[o, i] += weight[o, i, k].double() * g / (g.sum() + 1e-7)
    return kernel


@pytest.mark.parametrize("version", ["gauss", "bilinear", "triangle"])
def test_non_square_kernel_matches_per_tap_formula(version):
    torch.manual_seed(2)
    layer = Dcls2d(3, 3, 4, (7, 23), padding=(3, 11), groups=3, version=version)
    with torch.no_grad():
        layer.P[0].uniform_(-11, 11)  # width: the long axis
        layer.P[1].uniform_(-3, 3)
        if layer.SIG is not None:
            layer.SIG.uniform_(-0.8, 0.8)
    kernel = layer.construct_kernel()
    assert kernel.shape == (3, 1, 7, 23)
    expected = _per_tap_kernel(layer.weight, layer.P, layer.SIG, (7, 23), version)
    torch.testing.assert_close(kernel.double(), expected, atol=1e-5, rtol=0)
    # Taps sit where their positions say: the width spread is large, the height one small.
    nz = kernel.abs().sum((0, 1))
    assert nz.sum(0).nonzero().numel() > 7
    x = torch.randn(2, 3, 10, 40)
    assert layer(x).shape == (2, 3, 10, 40)
    # Initial positions are clamped per axis: width ±11, height ±3.
    fresh = Dcls2d(64, 64, 26, (7, 23), padding=(3, 11), groups=64)
    assert fresh.P[0].abs().max() <= 11 and fresh.P[1].abs().max() <= 3


def test_standalone_kernel_builder():
    torch.manual_seed(3)
    builder = DclsKernel((5, 5), "gauss")
    assert list(builder.state_dict()) == []  # grids are non-persistent
    w, p, s = torch.randn(2, 1, 3), torch.randn(2, 2, 1, 3), torch.rand(2, 2, 1, 3)
    torch.testing.assert_close(builder(w, p, s), build_dcls_kernel(w, p, s, (5, 5), "gauss"))
    # One centred tap with Σ = 0 (σ = 0.27): by hand, the centre holds
    # 1 / (Σ_d exp(-d²/(2·0.27²)))², d = -2..2, and the kernel sums to 1.
    k = build_dcls_kernel(torch.full((1, 1, 1), 2.0), torch.zeros(2, 1, 1, 1), torch.zeros(2, 1, 1, 1), (5, 5))
    s = sum(math.exp(-0.5 * (d / 0.27) ** 2) for d in range(-2, 3))
    assert k[0, 0, 2, 2].item() == pytest.approx(2.0 / (s * s + 1e-7), rel=1e-6)
    assert k.sum().item() == pytest.approx(2.0, rel=1e-6)


@pytest.mark.parametrize("cls,x_shape", [(Dcls1d, (2, 4, 15)), (Dcls2d, (2, 4, 9, 11))])
def test_dtype_move_after_forward(cls, x_shape):
    torch.manual_seed(4)
    layer = cls(4, 4, 3, 7, padding=3, groups=4)
    x = torch.randn(x_shape)
    y32 = layer(x)
    assert not any("grid" in k for k in layer.state_dict())
    layer = layer.to(torch.float64)
    assert layer.kernel_builder.grid0.dtype == torch.float64
    y64 = layer(x.double())
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64.float(), y32, atol=1e-5, rtol=0)


def test_shared_positions_accumulate_gradients():
    torch.manual_seed(5)
    a = Dcls2d(4, 4, 5, 9, padding=4, groups=4)
    b = Dcls2d(4, 4, 5, 9, padding=4, groups=4)
    share_positions([a, b])
    assert positions_are_shared(a, b)
    model = nn.Sequential(a, b)
    assert len(list(model.parameters())) == 2 * 2 + 2  # weights, biases + one P + one SIG
    x = torch.randn(2, 4, 10, 10)
    model(x).sum().backward()
    total = a.P.grad.clone()
    # The same gradient computed by hand: two unshared copies, summed.
    a2, b2 = Dcls2d(4, 4, 5, 9, padding=4, groups=4), Dcls2d(4, 4, 5, 9, padding=4, groups=4)
    a2.load_state_dict(a.state_dict())
    b2.load_state_dict(b.state_dict())
    nn.Sequential(a2, b2)(x).sum().backward()
    torch.testing.assert_close(total, a2.P.grad + b2.P.grad)
    # An optimizer step moves both layers' positions together.
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.step()
    assert a.P is b.P
    # Round trip keeps the sharing.
    restored = nn.Sequential(Dcls2d(4, 4, 5, 9, padding=4, groups=4), Dcls2d(4, 4, 5, 9, padding=4, groups=4))
    share_positions(list(restored))
    restored.load_state_dict(model.state_dict())
    torch.testing.assert_close(restored(x), model(x))
    with pytest.raises(ValueError):
        share_positions([a, Dcls2d(4, 4, 6, 9, padding=4, groups=4)])


def _two_shared_layers(seed=3):
    torch.manual_seed(seed)
    a, b = Dcls2d(6, 6, 7, 11, padding=5, groups=6), Dcls2d(6, 6, 7, 11, padding=5, groups=6)
    share_positions([a, b])
    with torch.no_grad():
        a.SIG.uniform_(-0.5, 0.5)
    return nn.Sequential(a, nn.GELU(), b)


def test_shared_kernel_build_same_numbers_built_once():
    plain = _two_shared_layers()
    shared = _two_shared_layers()
    cache = share_kernel_build(shared, [shared[0], shared[2]])
    assert cache.builds == 0
    x = torch.randn(2, 6, 12, 13)
    out_p, out_s = plain(x), shared(x)
    assert cache.builds == 1  # the first layer built both kernels, the second took its own
    torch.testing.assert_close(out_s, out_p, atol=1e-6, rtol=0)
    gp = _grads(out_p, list(plain.parameters()))
    gs = _grads(out_s, list(shared.parameters()))
    for a, b in zip(gs, gp):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # Outside the container's forward the cache is off: a layer called alone builds its own.
    assert not cache.active
    shared[0](x)
    assert cache.builds == 1
    # Folding takes the layers out of the group; the folded model gives the same outputs.
    with torch.no_grad():
        folded = fold_dcls(copy.deepcopy(shared).eval())
        assert not any(isinstance(m, Dcls2d) for m in folded.modules())
        assert [m for m in folded.modules() if hasattr(m, "shared_kernel_cache")] == []
        torch.testing.assert_close(folded(x), shared.eval()(x), atol=1e-5, rtol=0)
    assert shared[0].shared_kernel_cache.layers == [shared[0], shared[2]]  # the original keeps its group


def test_shared_kernel_build_gradient_accumulation_and_copies():
    import pickle

    model = _two_shared_layers()
    share_kernel_build(model, [model[0], model[2]])
    x = torch.randn(2, 6, 9, 9)
    # Two forwards before one step: each must build its own graph (the first
    # backward frees the first graph's buffers).
    model(x).square().sum().backward()
    model(x).square().sum().backward()
    twice = model[0].P.grad.clone()
    model.zero_grad()
    model(x).square().sum().backward()
    torch.testing.assert_close(twice, 2 * model[0].P.grad)
    # Copies keep their own working cache, switched by their own hooks.
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone[0].shared_kernel_cache is clone[2].shared_kernel_cache is not model[0].shared_kernel_cache
        builds = clone[0].shared_kernel_cache.builds
        torch.testing.assert_close(clone(x), model(x))
        assert clone[0].shared_kernel_cache.builds == builds + 1
    with pytest.raises(ValueError, match="share positions"):
        share_kernel_build(nn.Sequential(), [Dcls2d(2, 2, 3, 5, groups=2), Dcls2d(2, 2, 3, 5, groups=2)])


def test_param_groups():
    model = nn.Sequential(Dcls2d(4, 4, 5, 9, padding=4, groups=4), nn.LayerNorm(4), nn.Linear(4, 3))
    groups = {g["group"]: g for g in dcls_param_groups(model, lr=1e-3, weight_decay=0.05)}
    positions = groups["positions"]
    assert {id(p) for p in positions["params"]} == {id(model[0].P), id(model[0].SIG)}
    assert positions["lr"] == pytest.approx(5e-3) and positions["weight_decay"] == 0.0 and positions["lr_scale"] == 5.0
    assert {id(p) for p in groups["decay"]["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert groups["decay"]["weight_decay"] == 0.05 and groups["decay"]["lr"] == 1e-3
    assert {id(p) for p in groups["no_decay"]["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias), id(model[2].bias)}
    assert groups["no_decay"]["weight_decay"] == 0.0
    n_params = sum(len(g["params"]) for g in groups.values())
    assert n_params == len(list(model.parameters()))
    torch.optim.AdamW(dcls_param_groups(model, 1e-3, 0.05))  # accepted as is


def test_eval_kernel_cache_invalidation():
    torch.manual_seed(6)
    layer = Dcls2d(4, 4, 5, 9, padding=4, groups=4).eval()
    x = torch.randn(1, 4, 12, 12)
    with torch.no_grad():
        k1 = layer.construct_kernel()
        assert layer.construct_kernel() is k1  # cached
        layer.P.add_(1.0)  # in-place change bumps the version counter
        k2 = layer.construct_kernel()
        assert k2 is not k1
        torch.testing.assert_close(k2, layer.kernel_builder(layer.weight, layer.P, layer.SIG))
        y_before = layer(x)
    # An optimizer step invalidates too.
    layer.train()
    layer(x).sum().backward()
    torch.optim.SGD(layer.parameters(), lr=1.0).step()
    layer.eval()
    with torch.no_grad():
        fresh = layer.kernel_builder(layer.weight, layer.P, layer.SIG)
        torch.testing.assert_close(layer.construct_kernel(), fresh)
        assert not torch.allclose(layer(x), y_before)
        cached = layer.construct_kernel()
        # load_state_dict copies in place: invalidates.
        other = Dcls2d(4, 4, 5, 9, padding=4, groups=4)
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer.construct_kernel(), other.construct_kernel())
        assert layer.construct_kernel() is not cached
        cached = layer.construct_kernel()
        assert layer.construct_kernel() is cached
    # train() drops the cache (nothing changed, yet the next eval kernel is a new build);
    # eval with gradients enabled builds a fresh graph.
    layer.train()
    layer.eval()
    with torch.no_grad():
        rebuilt = layer.construct_kernel()
        assert rebuilt is not cached
        torch.testing.assert_close(rebuilt, cached, atol=0, rtol=0)
    y = layer(x)
    y.sum().backward()
    assert layer.P.grad is not None


@pytest.mark.parametrize("version", ["gauss", "bilinear", "triangle"])
def test_fold_dcls(version):
    torch.manual_seed(7)
    model = nn.Sequential(
        Dcls2d(3, 6, 4, 7, padding=3, version=version),
        nn.ReLU(),
        nn.Sequential(Dcls2d(6, 6, 5, (5, 9), padding=(2, 4), groups=6, version=version)),
    ).eval()
    x = torch.randn(2, 3, 11, 13)
    with torch.no_grad():
        expected = model(x)
        folded = fold_dcls(model)
        assert isinstance(folded[0], nn.Conv2d) and isinstance(folded[2][0], nn.Conv2d)
        assert folded[2][0].kernel_size == (5, 9)
        torch.testing.assert_close(folded(x), expected, atol=1e-5, rtol=0)
    layer1d = Dcls1d(2, 2, 3, 9, padding=4, groups=2, version=version).eval()
    x1 = torch.randn(2, 2, 20)
    with torch.no_grad():
        conv = fold_dcls(layer1d)
        assert isinstance(conv, nn.Conv1d)
        torch.testing.assert_close(conv(x1), layer1d(x1), atol=1e-5, rtol=0)


def test_clamp_positions():
    layer = Dcls2d(2, 2, 3, (5, 9), padding=(2, 4), groups=2)
    with torch.no_grad():
        layer.P.mul_(100)
    layer.clamp_positions()
    assert layer.P[0].abs().max() <= 4 and layer.P[1].abs().max() <= 2


@pytest.mark.parametrize(
    "shape,kernel,padding",
    [((2, 3, 6, 7), (5, 5), (2, 2)), ((1, 2, 5, 8), (3, 5), (1, 2)), ((2, 2, 4, 3), (7, 7), (3, 3)), ((1, 2, 6, 6), (5, 5), (0, 4))],
)
def test_fast_depthwise_gradcheck(shape, kernel, padding):
    torch.manual_seed(8)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(shape[1], 1, *kernel, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: DepthwiseConv2dCPU.apply(a, b, padding), (x, w))
    # The cropping wrapper (maps smaller than the kernel) is exact too.
    assert torch.autograd.gradcheck(lambda a, b: depthwise_conv2d_cpu(a, b, None, padding), (x, w))


@pytest.mark.parametrize("shape", [(2, 8, 20, 19), (2, 16, 8, 7), (1, 4, 3, 30)])
def test_fast_depthwise_matches_stock_large_kernel(shape):
    torch.manual_seed(9)
    c = shape[1]
    x = torch.randn(shape, requires_grad=True)
    w = torch.randn(c, 1, 23, 23, requires_grad=True)
    b = torch.randn(c, requires_grad=True)
    assert fast_path_applies(x, w, (1, 1), (11, 11), (1, 1), c)
    y = conv2d(x, w, b, 1, 11, 1, c)
    with fast_depthwise(False):
        y_ref = conv2d(x, w, b, 1, 11, 1, c)
    torch.testing.assert_close(y, F.conv2d(x, w, b, 1, 11, 1, c), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(y, y_ref)
    for g, g_ref in zip(_grads(y, [x, w, b]), _grads(y_ref, [x, w, b])):
        torch.testing.assert_close(g, g_ref, atol=2e-4, rtol=1e-4)


def test_fast_path_only_for_depthwise_stride_one():
    x = torch.randn(1, 4, 8, 8)
    assert not fast_path_applies(x, torch.randn(4, 1, 5, 5), (2, 2), (2, 2), (1, 1), 4)
    assert not fast_path_applies(x, torch.randn(8, 2, 5, 5), (1, 1), (2, 2), (1, 1), 2)
    assert not fast_path_applies(x.half(), torch.randn(4, 1, 5, 5).half(), (1, 1), (2, 2), (1, 1), 4)
    assert fast_path_applies(x, torch.randn(4, 1, 5, 5), (1, 1), (2, 2), (1, 1), 4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="version"):
        Dcls2d(2, 2, 3, 5, version="cubic")
    with pytest.raises(ValueError, match="divisible"):
        Dcls2d(3, 4, 3, 5, groups=2)
    with pytest.raises(ValueError, match="kernel_count"):
        Dcls1d(2, 2, 0, 5)
