"""The fused Triton build of DCLS-Gauss kernels against the PyTorch build.

Run in Triton's interpreter (TRITON_INTERPRET=1 must be set before the kernels
are decorated, hence a subprocess): kernels of several layers sharing
positions and Σ, and the gradients of a random loss with respect to the
positions, Σ and every layer's weights, against ``build_dcls_kernel`` layer by
layer with autograd. Positions include taps at and beyond the grid edge (cut
tails) and Σ of both signs and zero.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import triton  # noqa: E402,F401 - torch's Linux wheels carry it; these tests must run, not skip

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

# name: (layers, out channels, in/groups, taps, (D_h, D_w))
CASES = {
    "convnext_stage_23x23_26_taps": (3, 4, 1, 26, (23, 23)),
    "non_square_7x23": (2, 3, 1, 26, (7, 23)),
    "grouped_few_taps_9x9": (2, 2, 3, 5, (9, 9)),
    "one_layer": (1, 2, 1, 17, (33, 5)),
}

CHECK_SCRIPT = r"""
import json, sys
import torch
torch.set_num_threads(1)
from audio_dcls.layers.dcls_kernel import build_dcls_kernel
from audio_dcls.ops.dcls_kernel_triton import dcls_gauss_kernels
results = {}
for name, (layers, out_c, in_c, taps, sizes) in json.loads(sys.argv[1]).items():
    g = torch.Generator().manual_seed(0)
    lim = torch.tensor([sizes[1] // 2, sizes[0] // 2], dtype=torch.float32).view(2, 1, 1, 1)
    P = ((torch.rand(2, out_c, in_c, taps, generator=g) * 2.4 - 1.2) * lim).requires_grad_()  # some beyond the edge
    S = (torch.rand(2, out_c, in_c, taps, generator=g) * 1.6 - 0.8)
    S[0, 0, 0, 0] = 0.0  # |Σ| has no derivative at 0; both builds must take it as 0
    S.requires_grad_()
    W = (torch.randn(layers, out_c, in_c, taps, generator=g)).requires_grad_()
    upstream = torch.randn(layers, out_c, in_c, *sizes, generator=g)
    fused = dcls_gauss_kernels(W, P, S, sizes)
    ref = torch.stack([build_dcls_kernel(W[l], P, S, sizes, "gauss") for l in range(layers)])
    grads_fused = torch.autograd.grad((fused * upstream).sum(), (P, S, W))
    grads_ref = torch.autograd.grad((ref * upstream).sum(), (P, S, W))
    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
    results[name] = {
        "shape_ok": tuple(fused.shape) == (layers, out_c, in_c, *sizes),
        "kernel": rel(fused, ref),
        "dP": rel(grads_fused[0], grads_ref[0]),
        "dSIG": rel(grads_fused[1], grads_ref[1]),
        "dW": rel(grads_fused[2], grads_ref[2]),
    }
print("RESULTS " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CHECK_SCRIPT, json.dumps(CASES)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULTS "))
    return json.loads(line[len("RESULTS "):])


@pytest.mark.parametrize("name", list(CASES))
def test_fused_build_matches_pytorch_build(results, name):
    r = results[name]
    assert r["shape_ok"]
    assert r["kernel"] < 1e-5, r
    for grad in ("dP", "dSIG", "dW"):
        assert r[grad] < 1e-4, (grad, r)


MODEL_SCRIPT = r"""
import json, sys
import timm, torch
torch.set_num_threads(1)
import audio_dcls  # noqa: F401
from audio_dcls.ops import config
torch.manual_seed(0)
model = timm.create_model("convnext_atto_dcls_audio", depths=[2, 1, 1, 1], dims=[16, 32, 64, 128]).train()
x = torch.randn(2, 1, 128, 160)
def fused_nodes(out):
    seen, todo, found = set(), [out.grad_fn], 0
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        found += type(node).__name__ == "DclsGaussKernelsBackward"
        todo.extend(f for f, _ in node.next_functions)
    return found
def run(fused):
    with config.override(fused_build="force" if fused else "off"):
        model.zero_grad()
        out = model(x)
        nodes = fused_nodes(out)
        out.square().sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, nodes
out_f, grads_f, nodes_f = run(True)
out_r, grads_r, nodes_r = run(False)
res = {"failed": config.fallback_events(), "nodes": [nodes_f, nodes_r], "out": (out_f - out_r).abs().max().item() / out_r.abs().max().item(),
       "grad": max(((grads_f[n] - g).abs().max() / g.abs().max().clamp_min(1e-12)).item() for n, g in grads_r.items())}
print("RESULTS " + json.dumps(res))
"""


def test_fused_build_inside_a_model():
    """The model path: each stage's kernels built by the fused kernel (forced on the CPU under
    the interpreter) give the outputs and every parameter gradient of the PyTorch build."""
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", MODEL_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULTS "))[len("RESULTS "):])
    assert res["failed"] == [], res
    assert res["nodes"] == [4, 0], res  # one fused build per stage, none when turned off
    assert res["out"] < 1e-5 and res["grad"] < 1e-4, res


def test_shared_kernels_falls_back_off_cuda():
    """On the CPU (and for other versions) the group build is the PyTorch one."""
    import torch

    from audio_dcls.layers import Dcls2d, share_positions

    torch.manual_seed(0)
    layers = [Dcls2d(3, 3, 5, 9, padding=4, groups=3) for _ in range(2)]
    share_positions(layers)
    kernels = layers[0].kernel_builder.shared_kernels([m.weight for m in layers], layers[0].P, layers[0].SIG)
    for m, k in zip(layers, kernels):
        torch.testing.assert_close(k, m.kernel_builder(m.weight, m.P, m.SIG), atol=1e-6, rtol=0)


@pytest.mark.parametrize("capability", [80, 90])
def test_fused_build_compiles_for_cuda(capability):
    """The interpreter checks the arithmetic, not the lowering: compile both kernels to
    CUDA binaries (Ampere and Hopper) with Triton's own toolchain, no GPU needed."""
    from triton_compile import compile_for_cuda

    from audio_dcls.ops import dcls_kernel_triton as fused

    pointers = {"fwd": ("P", "S", "W", "OUT"), "bwd": ("P", "S", "W", "GRAD", "DP", "DS", "DW_")}
    sizes = {"DH": 23, "DW": 23, "BK": 32, "BH": 32, "BW": 32}
    for name, fn in (("fwd", fused._dcls_gauss_fwd), ("bwd", fused._dcls_gauss_bwd)):
        signature = {p: "*fp32" for p in pointers[name]} | {"L": "i32", "C": "i32", "K": "i32"} | {k: "constexpr" for k in sizes}
        compile_for_cuda(fn, signature, sizes, capability)
