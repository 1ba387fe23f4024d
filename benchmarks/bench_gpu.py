"""GPU speed of the Triton depthwise kernels, per layer and in the six audio models.

(a) layers: forward + backward of one depthwise layer at each ConvNeXt-T stage
    shape (batch 64; the stage sizes follow from the (2, 16) stem on a
    1×128×1001 log-mel and the 2×2 downsamplings: 96@64×62, 192@32×31,
    384@16×15, 768@8×7), fp32 activations under bf16 autocast, NCHW and
    channels_last inputs (the latter is what timm's ConvNeXt blocks feed their
    depthwise convs): stock nn.Conv2d 7×7 and 23×23 against ours
    (DepthwiseConv2d, Triton) of the same sizes and our DCLS layer (26 taps,
    23×23); plus the sum over ConvNeXt-T's 3/3/9/3 blocks.
(b) models: training (AdamW step, BCE loss on 527 labels) and inference
    samples/s, bf16 autocast, for ConvNeXt-T, ConvFormer-S18 and FastViT-SA24:
    stock-PyTorch DSC, our DSC (use_fast_depthwise), our DCLS, and DCLS built
    from the reference ``dcls`` 0.1.1 layers (``--oracle-wheel PATH``, else the
    installed package, else the column is skipped).

Ratios are printed against the stock DSC model / stock layer of the same run;
everything lands in ``--out DIR/bench_gpu.json`` (rewritten after every
measurement, so a cut-off run keeps what it measured). A global time budget
(``--budget-s``, default 450 s) keeps the whole run under 8 minutes on one H100.

Single GPU:  python benchmarks/bench_gpu.py --out runs/bench_gpu [--channels-last] [--oracle-wheel dcls-0.1.1-py3-none-any.whl]
Diagnosis:   python benchmarks/bench_gpu.py --out runs/bench_gpu --models convnext_tiny --profile --ab-fused-build
             (per model column: host time to issue a training step vs device busy time,
             operator and kernel-launch counts, the top operators on each side; and the
             DCLS model once more with the fused kernel build off)
Layers only: python benchmarks/bench_gpu.py --out runs/bench_gpu --layers-only --check
             (--check: our kernels against F.conv2d on the stage shapes, and each pass timed alone)
CPU smoke:   .venv/bin/python benchmarks/bench_gpu.py --device cpu --tiny --out /tmp/bench_gpu
(torchrun is not used: this is a single-device benchmark.)
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from audio_dcls.io import atomic_write  # noqa: E402
from audio_dcls.layers import Dcls2d  # noqa: E402
from audio_dcls.layers.depthwise_conv import DepthwiseConv2d, use_fast_depthwise  # noqa: E402
from audio_dcls.ops import HAS_TRITON  # noqa: E402
from audio_dcls.ops import config as ops_config  # noqa: E402

log = logging.getLogger("bench_gpu")

NUM_CLASSES = 527
INPUT_SIZE = (128, 1001)  # (mel bins, frames) of a 10 s clip
STEM = (2, 16)  # kernel = stride of the shared audio stem
CONVNEXT_T = {"widths": (96, 192, 384, 768), "depths": (3, 3, 9, 3)}
DCLS_TAPS, DCLS_SIZE = 26, 23

FAMILIES = {  # family: (DSC model, DCLS model)
    "convnext_tiny": ("convnext_tiny_audio", "convnext_tiny_dcls_audio"),
    "convformer_s18": ("convformer_s18_audio", "convformer_s18_dcls_audio"),
    "fastvit_sa24": ("fastvit_sa24_audio", "fastvit_sa24_dcls_audio"),
}
TINY_FAMILIES = {
    "convnext_atto": ("convnext_atto_audio", "convnext_atto_dcls_audio"),
}
COLUMNS = ("stock_dsc", "ours_dsc", "ours_dcls", "oracle_dcls")
ORACLE_VERSION = {"gauss": "gauss", "bilinear": "v1", "triangle": "max"}


# ----------------------------------------------------------------------------
# Bookkeeping
# ----------------------------------------------------------------------------
class Budget:
    """Wall-clock budget of the whole run."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


class Report:
    def __init__(self, path: Path, meta: dict):
        self.path = path
        self.data = {"meta": meta, "layers": {}, "layer_totals": {}, "checks": {}, "models": {}, "ratios": {}, "triton": {}}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(self.data, indent=2, default=str))


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".strip()[:800] + "\n" + "".join(traceback.format_exc().splitlines(True)[-6:])[:1500]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, enabled: bool = True):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled)
    return contextlib.nullcontext()  # CPU smoke runs in fp32


def timed(fn: Callable[[], None], device: torch.device, target_s: float, min_iters: int = 2, max_iters: int = 200,
          warmup: int = 2) -> Tuple[float, int]:
    """(seconds per call, calls timed) of ``fn`` after ``warmup`` calls (the first ones compile and autotune).

    One timed call sizes the loop to about ``target_s``; with ``min_iters=1``
    and a call longer than ``target_s`` that call is the measurement.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    per_call = time.perf_counter() - t0
    iters = int(max(min_iters, min(max_iters, target_s / max(per_call, 1e-6))))
    if min_iters <= 1 and iters <= 1:
        return per_call, 1
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / iters, iters


# ----------------------------------------------------------------------------
# (a) layers
# ----------------------------------------------------------------------------
def convnext_stage_shapes(input_size=INPUT_SIZE, stem=STEM, widths=CONVNEXT_T["widths"]) -> List[Tuple[int, int, int]]:
    """(C, H, W) of each stage: the stem (kernel = stride) then a 2×2 stride-2 downsampling per stage."""
    h, w = (input_size[0] - stem[0]) // stem[0] + 1, (input_size[1] - stem[1]) // stem[1] + 1
    shapes = []
    for i, c in enumerate(widths):
        if i:
            h, w = (h - 2) // 2 + 1, (w - 2) // 2 + 1
        shapes.append((c, h, w))
    return shapes


def _layer_variants(c: int, kernel_sizes=(3, 7, DCLS_SIZE)) -> Dict[str, Callable[[], nn.Module]]:
    def stock(k):
        return lambda: nn.Conv2d(c, c, k, padding=k // 2, groups=c)

    def ours(k):
        return lambda: DepthwiseConv2d(c, c, k, padding=k // 2, groups=c)

    variants = {}
    for k in kernel_sizes:
        variants[f"stock_{k}x{k}"] = stock(k)
        variants[f"ours_{k}x{k}"] = ours(k)
    if DCLS_SIZE in kernel_sizes:
        variants[f"ours_dcls_{DCLS_SIZE}x{DCLS_SIZE}"] = lambda: Dcls2d(c, c, DCLS_TAPS, DCLS_SIZE, padding=DCLS_SIZE // 2, groups=c)
    return variants


def bench_layers(args, device, report: Report, budget: Budget) -> None:
    """Fills report["layers"][format][stage] and report["layer_totals"][format].

    Inside timm's ConvNeXt blocks the depthwise input is channels_last even in
    an NCHW model (the block permutes to NHWC and back), so both layouts are
    timed by default.
    """
    shapes = convnext_stage_shapes(args.input_size, widths=args.widths)
    depths = CONVNEXT_T["depths"]
    for fmt_name in args.layer_formats:
        memory_format = torch.channels_last if fmt_name == "channels_last" else torch.contiguous_format
        table = report.data["layers"].setdefault(fmt_name, {})
        for (c, h, w), depth in zip(shapes, depths):
            key = f"{c}@{h}x{w}"
            row = table.setdefault(key, {"shape": [args.batch, c, h, w], "blocks_in_convnext_t": depth})
            for name, make in _layer_variants(c, args.layer_kernels).items():
                if budget.left() < args.reserve_s:
                    row[name] = {"skipped": "time budget"}
                    continue
                layer = x = None
                try:
                    layer = make().to(device)
                    # fp32 activations under bf16 autocast, as in the models' residual stream
                    x = torch.randn(args.batch, c, h, w, device=device).contiguous(memory_format=memory_format).requires_grad_()

                    def step():
                        layer.zero_grad(set_to_none=True)
                        x.grad = None
                        with _autocast(device):
                            y = layer(x)
                        y.backward(torch.ones_like(y))

                    sec, iters = timed(step, device, args.layer_time_s, min_iters=args.min_iters, warmup=args.warmup)
                    row[name] = {"ms": 1000 * sec, "iters": iters}
                except Exception as err:  # noqa: BLE001 - record and go on
                    row[name] = {"error": _error(err)}
                finally:
                    layer = x = None
                    gc.collect()
                report.save()
            line = " ".join(f"{n}={row[n]['ms']:.3f}" for n in row if isinstance(row[n], dict) and "ms" in row[n])
            print(f"  layer {fmt_name:>13} {key:>10} ms: {line}", flush=True)
        totals = {}
        for name in _layer_variants(8, args.layer_kernels):
            ms = [table[f"{c}@{h}x{w}"].get(name, {}).get("ms") for c, h, w in shapes]
            if all(m is not None for m in ms):
                totals[name] = sum(m * d for m, d in zip(ms, depths))
        summary = {"ms_sum_over_convnext_t_blocks": totals}
        if "stock_7x7" in totals:
            for name, t in totals.items():
                if name != "stock_7x7":
                    summary[f"{name}_over_stock_7x7"] = t / totals["stock_7x7"]
        report.data["layer_totals"][fmt_name] = summary
        report.save()


def check_layers(args, device, report: Report, budget: Budget) -> None:
    """Our kernels against F.conv2d on the stage shapes: forward, input and weight gradients (relative max error)."""
    shapes = convnext_stage_shapes(args.input_size, widths=args.widths)
    batch = min(args.batch, 8)
    cases = [(s, k, torch.bfloat16) for s in shapes for k in args.layer_kernels]
    cases += [(s, DCLS_SIZE, torch.float32) for s in (shapes[0], shapes[-1])]
    # fp32 with tf32x3 products (near-fp32 results) on one pinned tile shape: it only checks
    # the numerics, and pinning spares the compile time of the autotuner's candidates.
    fp32_tiles = dict(fwd_tiles=dict(BLOCK_R=64, BLOCK_W=32, BLOCK_K=64, I_BLOCK=1), wgrad_tiles=dict(BLOCK_R=64, BLOCK_W=32, I_BLOCK=2))
    allow_tf32 = torch.backends.cudnn.allow_tf32
    for (c, h, w), k, dtype in cases:
        name = f"{c}@{h}x{w}_k{k}_{str(dtype).replace('torch.', '')}"
        if budget.left() < args.reserve_s:
            report.data["checks"][name] = {"skipped": "time budget"}
            continue
        fp32 = dtype == torch.float32
        torch.backends.cudnn.allow_tf32 = allow_tf32 and not fp32
        try:
            # The Triton weight gradient is what is checked, not the FFT one.
            with ops_config.override(wgrad="triton", **(fp32_tiles if fp32 else {})):
                report.data["checks"][name] = _check_one(device, batch, c, h, w, k, dtype, args.channels_last)
        except Exception as err:  # noqa: BLE001
            report.data["checks"][name] = {"error": _error(err)}
        finally:
            torch.backends.cudnn.allow_tf32 = allow_tf32
        report.save()
    worst = {}
    for name, res in report.data["checks"].items():
        if "y" in res:
            dtype = name.rsplit("_", 1)[-1]
            worst[dtype] = max(worst.get(dtype, 0.0), res["y"], res["grad_x"], res["grad_w"], res["grad_b"])
    print(f"  kernel checks, worst relative error by dtype: {worst}", flush=True)


def _check_one(device, batch: int, c: int, h: int, w: int, k: int, dtype, channels_last: bool) -> dict:
    """Relative max errors of one layer's forward and three gradients against float64 ``F.conv2d``."""
    from audio_dcls.ops import depthwise_triton

    torch.manual_seed(0)
    x = torch.randn(batch, c, h, w, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.to(dtype).requires_grad_()
    wt = (torch.randn(c, 1, k, k, device=device) / k).to(dtype).requires_grad_()
    b = torch.randn(c, device=device).to(dtype).requires_grad_()
    y = depthwise_triton.depthwise_conv2d_triton(x, wt, b, (k // 2, k // 2))  # (B, C, H, W)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, wt, b), g)
    ref_in = [t.detach().double().requires_grad_() for t in (x, wt, b)]
    y_ref = torch.nn.functional.conv2d(ref_in[0], ref_in[1], ref_in[2], 1, k // 2, 1, c)
    ref = torch.autograd.grad(y_ref, ref_in, g.double())

    def rel(a, r):
        return ((a.double() - r).abs().max() / r.abs().max().clamp_min(1e-12)).item()

    return {
        "y": rel(y, y_ref), "grad_x": rel(grads[0], ref[0]), "grad_w": rel(grads[1], ref[1]), "grad_b": rel(grads[2], ref[2]),
        "y_channels_last": bool(y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()),
    }


def breakdown_layers(args, device, report: Report, budget: Budget) -> None:
    """ms of each pass on its own (bf16, batch as the layer table): where the layer time goes."""
    from audio_dcls.ops import depthwise_triton as dt

    shapes = convnext_stage_shapes(args.input_size, widths=args.widths)
    out = report.data.setdefault("breakdown_ms", {})
    for (c, h, w) in shapes:
        for k in args.layer_kernels:
            if budget.left() < args.reserve_s:
                return
            name = f"{c}@{h}x{w}_k{k}"
            try:
                x = torch.randn(args.batch, c, h, w, device=device, dtype=torch.bfloat16)
                wt = torch.randn(c, 1, k, k, device=device) / k
                g = torch.randn(args.batch, c, h, w, device=device, dtype=torch.bfloat16)
                xp, gp = dt.pad_columns(x, k // 2, x.dtype), dt.pad_columns(g, k // 2, x.dtype)
                passes = {
                    "ours_fwd": lambda: dt.conv_forward_padded(xp, wt, None, k // 2, k // 2),
                    "ours_wgrad_triton": lambda: dt.weight_grad_padded(xp, gp, (k, k), k // 2, k // 2),
                    "ours_wgrad_fft": lambda: dt.weight_grad_fft_fp32(x, g, (k, k), k // 2, k // 2),
                    "ours_pad_copy": lambda: dt.pad_columns(x, k // 2, x.dtype),
                    "stock_fwd": lambda: torch.nn.functional.conv2d(x, wt.to(x.dtype), None, 1, k // 2, 1, c),
                    "stock_wgrad": lambda: torch.nn.grad.conv2d_weight(x, wt.shape, g, 1, k // 2, 1, c),
                }
                out[name] = {p: 1000 * timed(fn, device, 0.1, min_iters=3, warmup=2)[0] for p, fn in passes.items()}
            except Exception as err:  # noqa: BLE001
                out[name] = {"error": _error(err)}
            report.save()
            print(f"  breakdown {name}: " + " ".join(f"{p}={v:.3f}" for p, v in out[name].items() if isinstance(v, float)), flush=True)


# ----------------------------------------------------------------------------
# (b) models
# ----------------------------------------------------------------------------
def load_oracle(wheel: Optional[str]):
    """The reference ``DCLS.construct.modules``: from ``wheel`` (installed --no-deps into a temp dir) or installed."""
    if wheel:
        target = tempfile.mkdtemp(prefix="dcls_oracle_")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target, wheel], check=True)
        sys.path.insert(0, target)
    logging.getLogger().setLevel(logging.ERROR)  # the oracle warns about its missing CUDA extension
    from DCLS.construct import modules

    return modules


def to_oracle_dcls(model: nn.Module, oracle) -> int:
    """Swap every Dcls2d of ``model`` for the reference layer with the same hyper-parameters and values."""
    names = [n for n, m in model.named_modules() if isinstance(m, Dcls2d)]
    for name in names:
        ours = model.get_submodule(name)
        ref = oracle.Dcls2d(
            ours.in_channels, ours.out_channels, kernel_count=ours.kernel_count, stride=ours.stride, padding=ours.padding,
            dilated_kernel_size=ours.dilated_kernel_size, groups=ours.groups, bias=ours.bias is not None,
            version=ORACLE_VERSION[ours.version],
        )
        with torch.no_grad():
            for p in ("weight", "P", "SIG", "bias"):
                if getattr(ours, p, None) is not None and getattr(ref, p, None) is not None:
                    getattr(ref, p).copy_(getattr(ours, p))
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, ref)
    return len(names)


def build_model(column: str, dsc: str, dcls: str, oracle):
    import timm

    if column == "stock_dsc":
        return timm.create_model(dsc, pretrained=False)
    if column == "ours_dsc":
        return use_fast_depthwise(timm.create_model(dsc, pretrained=False))
    if column in ("ours_dcls", "ours_dcls_unfused"):
        return timm.create_model(dcls, pretrained=False)
    if column == "oracle_dcls":
        if oracle is None:
            raise LookupError("reference dcls package not available (pass --oracle-wheel PATH)")
        model = timm.create_model(dcls, pretrained=False)
        if to_oracle_dcls(model, oracle) == 0:
            raise LookupError(f"{dcls} has no Dcls2d layers to swap")
        return model
    raise ValueError(column)


def bench_model(model: nn.Module, args, device, budget: Budget, train: bool = True) -> dict:
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    x = torch.randn(args.batch, 1, *args.input_size, device=device).contiguous(memory_format=memory_format)
    out = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    target = (torch.rand(args.batch, getattr(model, "num_classes", NUM_CLASSES), device=device) < 0.05).float()

    def train_step():
        opt.zero_grad(set_to_none=True)
        with _autocast(device):
            loss = loss_fn(model(x).float(), target)
        loss.backward()
        opt.step()

    target_s = max(0.2, min(args.model_time_s, budget.left() / 8))
    if train:
        sec, iters = timed(train_step, device, target_s, min_iters=args.min_iters, max_iters=100, warmup=args.warmup)
        out.update(train_samples_per_s=args.batch / sec, train_step_ms=1000 * sec, train_iters=iters)
        if args.profile:
            out["train_step_profile"] = profile_step(train_step, device, args.profile_rows)
    else:
        out["train"] = "skipped"

    model.eval()

    def infer_step():
        with torch.inference_mode(), _autocast(device):
            model(x)

    sec, iters = timed(infer_step, device, target_s / 2, min_iters=args.min_iters, max_iters=200, warmup=args.warmup)
    out.update(infer_samples_per_s=args.batch / sec, infer_ms=1000 * sec, infer_iters=iters)
    return out


def profile_step(step: Callable[[], None], device, rows: int = 12) -> dict:
    """Where one (already warm) step spends its time: host time to issue it, device busy
    time, operator and kernel-launch counts, and the top operators by self time on each side.

    A step whose host time is close to its wall time while the device idles is bound by
    launch overhead (many small kernels), not by the kernels themselves.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        step()
        issued = time.perf_counter()
        _sync(device)
        done = time.perf_counter()
    events = prof.key_averages()

    def self_device_us(e) -> float:
        return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))

    top_level = [e for e in prof.events() if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    kernels = [e for e in prof.events() if getattr(e, "device_type", None) is not None and str(e.device_type).endswith("CUDA")]
    out = {
        "wall_ms": 1000 * (done - start),
        "host_issue_ms": 1000 * (issued - start),
        "aten_ops": len(top_level),
        "device_kernels": len(kernels),
        "device_busy_ms": sum(self_device_us(e) for e in events) / 1000 if device.type == "cuda" else None,
        "top_host_ops_ms": {e.key: round(e.self_cpu_time_total / 1000, 3) for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]},
    }
    if device.type == "cuda":
        out["top_device_ops_ms"] = {e.key: round(self_device_us(e) / 1000, 3) for e in sorted(events, key=lambda e: -self_device_us(e))[:rows]}
    return out


def bench_models(args, device, report: Report, budget: Budget) -> None:
    try:
        import timm

        import audio_dcls.models  # noqa: F401 - registers the audio models
    except Exception as err:  # noqa: BLE001
        report.data["models"]["error"] = _error(err)
        report.save()
        return
    oracle = None
    try:
        oracle = load_oracle(args.oracle_wheel)
    except Exception as err:  # noqa: BLE001
        report.data["meta"]["oracle"] = f"skipped: {type(err).__name__}: {err}"
    else:
        report.data["meta"]["oracle"] = getattr(oracle, "__file__", "dcls")
    columns = COLUMNS[:3] + ("ours_dcls_unfused",) + COLUMNS[3:] if args.ab_fused_build else COLUMNS
    families = TINY_FAMILIES if args.tiny else FAMILIES
    if args.models:
        families = {k: v for k, v in {**FAMILIES, **TINY_FAMILIES}.items() if k in args.models}
    missing = [n for pair in families.values() for n in pair if not timm.is_model(n)]
    if missing:  # audio_dcls.models registers them all: a missing one is a bug, not a column to skip
        raise LookupError(f"models not registered with timm: {', '.join(missing)}")
    for family, (dsc, dcls) in families.items():
        row = report.data["models"].setdefault(family, {"dsc_model": dsc, "dcls_model": dcls})
        for column in columns:
            if budget.left() < args.reserve_s:
                row[column] = {"skipped": "time budget"}
                continue
            model = None
            try:
                torch.manual_seed(0)
                model = build_model(column, dsc, dcls, oracle)
                # On a CPU smoke run the reference layers take ~10 s per training step: time inference only.
                train = not (args.tiny and device.type == "cpu" and column == "oracle_dcls")
                # The A/B column: the same DCLS model with its kernels built by PyTorch ops.
                with ops_config.override(**({"fused_build": "off"} if column == "ours_dcls_unfused" else {})):
                    row[column] = bench_model(model, args, device, budget, train=train)
            except LookupError as err:
                row[column] = {"skipped": str(err)}
            except Exception as err:  # noqa: BLE001
                row[column] = {"error": _error(err)}
            finally:
                model = None
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            res = row[column]
            if "infer_samples_per_s" in res:
                train = f"{res['train_samples_per_s']:8.1f}/s" if "train_samples_per_s" in res else "   (skipped)"
                print(f"  {family:>15} {column:>11}: train {train}  infer {res['infer_samples_per_s']:8.1f}/s", flush=True)
            else:
                print(f"  {family:>15} {column:>11}: {next(iter(res.values()))!s:.200}", flush=True)
            report.save()
        base = row.get("stock_dsc", {})
        ratios = {}
        for column in columns[1:]:
            res = row.get(column, {})
            for mode in ("train", "infer"):
                k = f"{mode}_samples_per_s"
                if k in res and k in base:
                    ratios[f"{column}_over_stock_dsc_{mode}"] = res[k] / base[k]
        report.data["ratios"][family] = ratios
        report.save()


def _listen_to_autotuner() -> List[dict]:
    """Every autotuning decision with its per-config timings (Triton versions that have the hook)."""
    entries: List[dict] = []
    try:
        from triton import knobs

        if not hasattr(knobs.autotuning, "listener"):
            return entries

        def listener(fn=None, key=None, best_config=None, configs_timings=None, duration=None, cache_hit=None, **_):
            entries.append({
                "kernel": getattr(fn, "__name__", str(fn)), "key": str(key), "best": str(best_config),
                "seconds": duration, "cache_hit": cache_hit,
                "timings_ms": {str(c): (t[0] if isinstance(t, (list, tuple)) else t) for c, t in (configs_timings or {}).items()},
            })

        knobs.autotuning.listener = listener
    except Exception:  # noqa: BLE001 - diagnostics only
        pass
    return entries


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory for bench_gpu.json")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke runs)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes and models (CPU smoke test)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 64; 2 with --tiny)")
    p.add_argument("--channels-last", action="store_true", help="channels_last models and inputs in the model part")
    p.add_argument("--layers-only", action="store_true", help="skip the whole-model part")
    p.add_argument("--check", action="store_true",
                   help="also check our kernels against F.conv2d on the stage shapes and time each pass alone")
    p.add_argument("--layer-kernels", default="7,23", help="kernel sizes of the layer table (default 7,23; add 3 for FastViT's)")
    p.add_argument("--layer-formats", default="nchw,channels_last", help="input layouts of the layer table")
    p.add_argument("--models", default=None, help="comma-separated families to run (default: all six models)")
    p.add_argument("--oracle-wheel", default=None, help="dcls 0.1.1 wheel for the reference-DCLS column")
    p.add_argument("--profile", action="store_true",
                   help="also profile one training step per model column (host vs device time, launch counts, top ops)")
    p.add_argument("--profile-rows", type=int, default=12, help="operators listed per side with --profile")
    p.add_argument("--ab-fused-build", action="store_true",
                   help="add the column ours_dcls_unfused: our DCLS model with the fused Triton kernel build turned off")
    p.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget of the whole run")
    p.add_argument("--reserve-s", type=float, default=None, help="stop starting measurements with less than this left")
    args = p.parse_args(argv)
    if args.models:
        args.models = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown_models = sorted(set(args.models) - set(FAMILIES) - set(TINY_FAMILIES))
        if unknown_models:
            p.error(f"unknown --models {unknown_models}; choose from {sorted({**FAMILIES, **TINY_FAMILIES})}")
    args.layer_kernels = tuple(int(k) for k in args.layer_kernels.split(","))
    args.layer_formats = tuple(f.strip() for f in args.layer_formats.split(",") if f.strip())
    unknown = set(args.layer_formats) - {"nchw", "channels_last"}
    if unknown:
        p.error(f"unknown --layer-formats {sorted(unknown)}; use nchw and/or channels_last")
    if args.tiny:
        args.batch = args.batch or 2
        args.widths = (8, 16, 16, 32)
        args.input_size = (64, 201)
        args.layer_time_s, args.model_time_s, args.warmup, args.min_iters = 0.02, 0.05, 0, 1
        args.reserve_s = 1.0 if args.reserve_s is None else args.reserve_s
    else:
        args.batch = args.batch or 64
        args.widths = CONVNEXT_T["widths"]
        args.input_size = INPUT_SIZE
        args.layer_time_s, args.model_time_s, args.warmup, args.min_iters = 0.25, 2.5, 3, 3
        args.reserve_s = 20.0 if args.reserve_s is None else args.reserve_s
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: CUDA is not available (use --device cpu --tiny for a smoke run)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the stock baselines get cuDNN's best algorithms
    else:
        torch.set_num_threads(1)  # smoke runs share a small machine; no OpenMP barriers to wait on
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT)] + list(sys.argv[1:] if argv is None else argv))
    meta = {
        "command": command,
        "torch": torch.__version__, "triton": triton_version, "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cuda": torch.version.cuda, "batch": args.batch, "input": [1, *args.input_size],
        "channels_last": args.channels_last, "autocast": "bf16" if device.type == "cuda" else "off",
        "cudnn_benchmark": torch.backends.cudnn.benchmark, "tiny": args.tiny,
        "triton_route": HAS_TRITON,
        "ops_settings": ops_config.settings(),
    }
    report = Report(Path(args.out) / "bench_gpu.json", meta)
    tuning_log = _listen_to_autotuner()
    print(f"# bench_gpu  torch {torch.__version__}  triton {triton_version}  {meta['device']}  batch {args.batch}"
          f"  {'channels_last' if args.channels_last else 'NCHW'}", flush=True)
    t0 = time.monotonic()
    if args.check and device.type == "cuda":
        print("(0) kernel checks against F.conv2d", flush=True)
        check_layers(args, device, report, budget)
    print("(a) depthwise layers, forward + backward", flush=True)
    bench_layers(args, device, report, budget)
    if not args.layers_only:
        print("(b) models, samples/s", flush=True)
        bench_models(args, device, report, budget)
    if args.check and device.type == "cuda":
        print("(c) where the layer time goes, pass by pass", flush=True)
        breakdown_layers(args, device, report, budget)
    if HAS_TRITON:
        report.data["triton"] = {"routes": ops_config.routes_state(), "wgrad_timings": ops_config.wgrad_timings(),
                                 "route_counts": ops_config.route_counts(), "fallbacks": ops_config.fallback_events(),
                                 "autotuning": tuning_log}
    report.data["meta"]["wall_s"] = time.monotonic() - t0
    report.save()

    print("\nratios (same run):")
    for fmt_name, totals in report.data["layer_totals"].items():
        for key in [n for n in totals if n.endswith("_over_stock_7x7")]:
            name = key[: -len("_over_stock_7x7")]
            print(f"  ConvNeXt-T depthwise layers fwd+bwd ({fmt_name}), {name} / stock 7x7: {totals[key]:.2f}")
    for family, ratios in report.data["ratios"].items():
        for key in ("ours_dcls_over_stock_dsc_train", "ours_dcls_over_stock_dsc_infer", "ours_dsc_over_stock_dsc_train",
                    "ours_dcls_unfused_over_stock_dsc_train", "oracle_dcls_over_stock_dsc_train"):
            if key in ratios:
                print(f"  {family}: {key.replace('_over_', ' / ').replace('_', ' ')} = {ratios[key]:.2f}")
    fallbacks = report.data["triton"].get("fallbacks") if report.data["triton"] else None
    if fallbacks:
        print(f"  WARNING: {len(fallbacks)} Triton kernel(s) fell back to the stock route: see 'triton.fallbacks'")
    print(f"\nJSON: {report.path}\nreproduce: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
