"""Triton depthwise kernels and the DepthwiseConv2d swap.

The kernels are checked on CPU in Triton's interpreter (TRITON_INTERPRET=1,
which must be set before the kernels are decorated, hence one subprocess
for all cases): forward, input gradient, weight and bias gradients against
F.conv2d in float64 on the same (rounded) values, over several kernel sizes,
both memory layouts, fp32 / bf16 / fp16, CPU autocast, forced small tiles
(several column tiles, several column chunks, row tiles across images, split
weight-gradient reductions) and the FFT weight-gradient route.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import triton  # noqa: E402,F401 - torch's Linux wheels carry it; these tests must run, not skip

from audio_dcls.layers.depthwise_conv import DepthwiseConv2d, is_fast_depthwise_candidate, use_fast_depthwise  # noqa: E402
from audio_dcls.ops import conv2d  # noqa: E402
from audio_dcls.ops import depthwise_triton  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

SMALL_TILES = {"fwd": dict(BLOCK_R=16, BLOCK_W=16, BLOCK_K=16, I_BLOCK=4), "wgrad": dict(BLOCK_R=16, BLOCK_W=16, I_BLOCK=4)}

# name: (B, C, H, W), (KH, KW), (PH, PW), dtype, channels_last, bias, options
CASES = {
    "k3_fp32_nchw": ((2, 3, 6, 7), (3, 3), (1, 1), "float32", False, True, {}),
    "k7_fp32_channels_last": ((2, 3, 9, 10), (7, 7), (3, 3), "float32", True, True, {"repeat": True}),
    "k23_fp32_map_smaller_than_kernel": ((2, 2, 8, 7), (23, 23), (11, 11), "float32", False, True, {}),
    "k23_fp32_small_tiles_channels_last": ((2, 2, 5, 35), (23, 23), (11, 11), "float32", True, False, {"tiles": True}),
    "k7x5_uneven_padding_small_tiles": ((3, 2, 9, 20), (7, 5), (6, 0), "float32", False, True, {"tiles": True}),
    "k31_fp32": ((1, 1, 6, 33), (31, 31), (15, 15), "float32", False, True, {}),
    "k23_bf16_channels_last": ((2, 2, 9, 10), (23, 23), (11, 11), "bfloat16", True, True, {}),
    "k7_bf16_nchw": ((2, 4, 9, 10), (7, 7), (3, 3), "bfloat16", False, True, {}),
    "k5_fp16_nchw": ((2, 2, 7, 9), (5, 5), (2, 2), "float16", False, True, {}),
    "k23_autocast_bf16": ((1, 2, 9, 11), (23, 23), (11, 11), "float32", False, True, {"autocast": True}),
    "k7_fft_weight_grad": ((2, 2, 9, 10), (7, 7), (3, 3), "float32", False, True, {"wgrad": "fft"}),
}
TOLERANCE = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}

CHECK_SCRIPT = r"""
import json, sys
import torch, torch.nn.functional as F
torch.set_num_threads(1)
from audio_dcls.ops import config, depthwise_triton as dt
assert dt.INTERPRET and config.strict()  # both read from the environment at import
cases, small_tiles = json.loads(sys.argv[1]), json.loads(sys.argv[2])
results = {}
def run_case(shape, ksize, padding, dtype, channels_last, use_bias, opts):
    torch.manual_seed(0)
    dtype = getattr(torch, dtype)
    b, c, h, w = shape
    autocast = opts.get("autocast", False)
    x = torch.randn(shape).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    weight = torch.randn(c, 1, *ksize).div(ksize[0]).to(dtype).requires_grad_()
    bias = torch.randn(c).to(dtype).requires_grad_() if use_bias else None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = dt.depthwise_conv2d_triton(x, weight, bias, padding)
    grad_y = torch.randn(y.shape).to(y.dtype)
    inputs = [t for t in (x, weight, bias) if t is not None]
    grads = torch.autograd.grad(y, inputs, grad_y)
    repeat_diff = None
    if opts.get("repeat"):  # the second call of a shape skips the autotuner: same bits expected
        y2 = dt.depthwise_conv2d_triton(x, weight, bias, padding)
        grads2 = torch.autograd.grad(y2, inputs, grad_y)
        repeat_diff = max((a - b).abs().max().item() for a, b in zip((y,) + grads, (y2,) + grads2))
    # Reference in float64 on the values the computation saw.
    compute = torch.bfloat16 if autocast else dtype
    ref_in = [t.detach().to(compute).double().requires_grad_() for t in (x, weight)]
    ref_bias = bias.detach().double().requires_grad_() if use_bias else None
    y_ref = F.conv2d(ref_in[0], ref_in[1], ref_bias, 1, padding, 1, c)
    ref_grads = torch.autograd.grad(y_ref, ref_in + ([ref_bias] if use_bias else []), grad_y.double())
    def err(a, r):
        return (a.double() - r).abs().max().item() / max(r.abs().max().item(), 1e-12)
    names = ["y", "grad_x", "grad_w", "grad_b"][: 1 + len(inputs)]
    return {
        "errors": dict(zip(names, [err(y, y_ref)] + [err(g, r) for g, r in zip(grads, ref_grads)])),
        "y_dtype": str(y.dtype).replace("torch.", ""),
        "grad_dtypes": [str(g.dtype).replace("torch.", "") for g in grads],
        "input_dtypes": [str(t.dtype).replace("torch.", "") for t in inputs],
        "y_channels_last": (not y.is_contiguous()) and y.is_contiguous(memory_format=torch.channels_last),
        "grad_x_channels_last": (not grads[0].is_contiguous()) and grads[0].is_contiguous(memory_format=torch.channels_last),
        "y_shape": list(y.shape),
        "repeat_diff": repeat_diff,
        "ref_shape": list(y_ref.shape),
    }
for name, (shape, ksize, padding, dtype, channels_last, use_bias, opts) in cases.items():
    tiles = {f"{kind}_tiles": small_tiles[kind] if opts.get("tiles") else None for kind in ("fwd", "wgrad")}
    before = config.route_counts()
    with config.override(wgrad=opts.get("wgrad", "auto"), **tiles):
        results[name] = run_case(shape, ksize, padding, dtype, channels_last, use_bias, opts)
    after = config.route_counts()
    results[name]["routes_run"] = {k: after[k] - before[k] for k in ("wgrad_triton", "wgrad_fft")}
results["fallbacks"] = config.fallback_events()
print("RESULTS " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def interpreter_results():
    env = dict(os.environ, TRITON_INTERPRET="1", AUDIO_DCLS_TRITON_STRICT="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", CHECK_SCRIPT, json.dumps(CASES), json.dumps(SMALL_TILES)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")][-1]
    return json.loads(line[len("RESULTS "):])


@pytest.mark.parametrize("name", list(CASES))
def test_kernels_match_conv2d(interpreter_results, name):
    _, _, _, dtype, channels_last, _, opts = CASES[name]
    res = interpreter_results[name]
    compute = "bfloat16" if opts.get("autocast") else dtype
    tol = TOLERANCE[compute]
    assert res["y_shape"] == res["ref_shape"]
    for what, error in res["errors"].items():
        assert error <= tol, f"{name}: {what} relative error {error:.2e} > {tol:.0e}"
    assert res["y_dtype"] == compute
    assert res["grad_dtypes"] == res["input_dtypes"]  # gradients in each input's own dtype
    assert res["y_channels_last"] == channels_last
    assert res["grad_x_channels_last"] == channels_last  # the input gradient keeps the input's layout
    if opts.get("repeat"):
        assert res["repeat_diff"] == 0.0  # deterministic, and the direct launch matches the tuned one
    # The weight gradient ran by the route asked for, once per backward (under auto on the CPU: Triton).
    route = opts.get("wgrad", "triton")
    calls = 2 if opts.get("repeat") else 1
    assert res["routes_run"] == {f"wgrad_{r}": calls if r == route else 0 for r in ("triton", "fft")}, res["routes_run"]


def test_no_kernel_fell_back(interpreter_results):
    assert interpreter_results["fallbacks"] == []  # strict mode raises anyway; nothing was recorded either


def test_triton_route_never_taken_on_cpu():
    x = torch.randn(2, 4, 9, 10)
    w = torch.randn(4, 1, 7, 7)
    assert not depthwise_triton.triton_path_applies(x, w, (1, 1), (3, 3), (1, 1), 4)
    if not depthwise_triton.INTERPRET:
        with pytest.raises(ValueError, match="CUDA"):
            depthwise_triton.depthwise_conv2d_triton(x, w, None, (3, 3))
    torch.testing.assert_close(conv2d(x, w, None, 1, 3, 1, 4), F.conv2d(x, w, None, 1, 3, 1, 4))


def test_depthwise_module_is_stock_conv2d_on_cpu():
    torch.manual_seed(0)
    ref = nn.Conv2d(6, 6, 7, padding=3, groups=6)
    ours = DepthwiseConv2d.from_conv(nn.Conv2d(6, 6, 7, padding=3, groups=6))
    ours.load_state_dict(ref.state_dict())
    assert isinstance(ours, nn.Conv2d) and list(ours.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, 6, 11, 12, requires_grad=True)
    y_ref, y = ref(x), ours(x)
    assert torch.equal(y, y_ref)
    g_ref = torch.autograd.grad(y_ref.square().sum(), (x, ref.weight, ref.bias))
    g = torch.autograd.grad(y.square().sum(), (x, ours.weight, ours.bias))
    for a, b in zip(g, g_ref):
        assert torch.equal(a, b)


def _toy_model():
    return nn.Sequential(
        nn.Conv2d(4, 4, 7, padding=3, groups=4),  # swapped
        nn.Sequential(
            nn.Conv2d(4, 4, 5, padding="same", groups=4, bias=False),  # swapped
            nn.Conv2d(4, 4, 3, padding=1, groups=4),  # 3×3: kept by default
            nn.Conv2d(4, 4, 1),  # pointwise: kept
            nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4),  # dilated: kept
            nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="reflect"),  # not zero padding: kept
        ),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4),  # strided: kept
        nn.Conv2d(4, 8, 3, padding=1, groups=4),  # channel multiplier 2: kept
    )


def test_use_fast_depthwise_swaps_only_depthwise_stride1_and_shares_parameters():
    torch.manual_seed(0)
    model = _toy_model()
    params_before = dict(model.named_parameters())
    keys_before = list(model.state_dict())
    x = torch.randn(2, 4, 12, 13)
    y_before = model(x)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    out = use_fast_depthwise(model)
    assert out is model
    swapped = {name for name, m in model.named_modules() if type(m) is DepthwiseConv2d}
    assert swapped == {"0", "1.0"}
    assert sum(type(m) is nn.Conv2d for m in model.modules()) == 6
    assert list(model.state_dict()) == keys_before
    for name, p in model.named_parameters():
        assert p is params_before[name]
    assert torch.equal(model(x), y_before)

    # The optimizer built before the swap still drives the swapped modules.
    w_before = model[0].weight.detach().clone()
    model(x).sum().backward()
    opt.step()
    assert not torch.equal(model[0].weight, w_before)


def test_use_fast_depthwise_on_a_bare_conv_and_candidates():
    conv = nn.Conv2d(3, 3, 7, padding=3, groups=3).eval()
    new = use_fast_depthwise(conv)
    assert type(new) is DepthwiseConv2d and new.weight is conv.weight and new.bias is conv.bias
    assert not new.training

    class MyConv(nn.Conv2d):
        pass

    assert not is_fast_depthwise_candidate(MyConv(3, 3, 7, padding=3, groups=3))
    assert not is_fast_depthwise_candidate(nn.Conv2d(4, 4, 4, padding="same", groups=4))  # asymmetric 'same'
    assert is_fast_depthwise_candidate(nn.Conv2d(4, 4, 5, padding="same", groups=4))
    three = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4))
    assert type(use_fast_depthwise(three, min_kernel_size=3)[0]) is DepthwiseConv2d


@pytest.mark.parametrize("dtype,kernel_size", [("bf16", 23), ("fp32", 7)])
def test_kernels_compile_for_hopper(dtype, kernel_size):
    """Every tile configuration the autotuner would try on a ConvNeXt-T stage-0 map, each
    kernel compiled to a CUDA binary for sm_90 (the interpreter does not lower anything)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from triton_compile import compile_for_cuda

    dt = depthwise_triton
    k = kernel_size
    shape = {"WO": 62, "W": 62, "KW": k, "KH": k}
    fwd_ints = ["B", "C", "H", "W", "HO", "WO", "PH", "PW", "LX8", "XS8", "HAS_BIAS"]
    assert len(dt.tile_candidates("fwd", shape)) >= 4 and len(dt.tile_candidates("wgrad", shape)) >= 3  # the whole search space
    for cfg in dt.tile_candidates("fwd", shape):
        sig = {"x_ptr": f"*{dtype}", "w_ptr": "*fp32", "bias_ptr": "*fp32", "y_ptr": f"*{dtype}"} | dict.fromkeys(fwd_ints, "i32")
        consts = {"KH": k, "KW": k, "PRECISION": "tf32", "DOT_FP32": False, **cfg.kwargs}
        compile_for_cuda(dt._dw_conv_kernel, sig | dict.fromkeys(consts, "constexpr"), consts, 90, cfg.num_warps, cfg.num_stages)
    wgrad_ints = ["B", "C", "H", "W", "HO", "WO", "PH", "PW", "LX8", "XS8", "LG8", "GS8", "N_WT_SLOTS"]
    for cfg in dt.tile_candidates("wgrad", shape):
        sig = {"x_ptr": f"*{dtype}", "g_ptr": f"*{dtype}", "part_ptr": "*fp32"} | dict.fromkeys(wgrad_ints, "i32")
        consts = {"KH": k, "KW": k, "PRECISION": "tf32", "DOT_FP32": False, **cfg.kwargs,
                  "BLOCK_N": dt.band_block({"BLOCK_W": cfg.kwargs["BLOCK_W"], "KW": k, "W": 62})}
        compile_for_cuda(dt._dw_conv_wgrad_kernel, sig | dict.fromkeys(consts, "constexpr"), consts, 90, cfg.num_warps, cfg.num_stages)
    relayout_ints = ["C", "H", "W", "S", "LD", "s_b", "s_c", "s_h", "s_w", "d_b", "d_c", "d_h", "d_w"]
    sig = {"src_ptr": "*fp32", "dst_ptr": f"*{dtype}"} | dict.fromkeys(relayout_ints, "i32") | {"BLOCK_C": "constexpr", "BLOCK_U": "constexpr"}
    compile_for_cuda(dt._relayout_kernel, sig, {"BLOCK_C": 32, "BLOCK_U": 64}, 90)
