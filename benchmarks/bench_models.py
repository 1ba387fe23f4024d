"""CPU benchmark of the audio models: each DCLS model against its depthwise (DSC) twin.

For every selected family size, all measured in this run on 1×128×1001 log-mel
input with ``torch.set_num_threads(2)`` (by default):

* inference in the prepared form (``prepare_for_inference``: DCLS folded to
  dense 23×23 kernels, FastViT reparameterised), batch 1 and batch 8, under
  ``torch.inference_mode``;
* one training step at batch 4: forward, BCE-with-logits loss, backward,
  AdamW over ``dcls_param_groups``;

and the DCLS/DSC ratio of each. DSC and DCLS runs are interleaved and the
fastest of the repeats is kept (as ``timeit`` advises): load from other
processes only ever adds time, and hits both alike. A third
training column rebuilds the DCLS model from the reference ``dcls`` package's
layers (same weights, same shared positions; checked to give the same
outputs) — slow, so by default only for ConvNeXt-T.

Below the table, one line per family times the depthwise convolutions alone
at batch 1 (each on the input it got inside its prepared model): the DSC
model's 7×7 and the DCLS model's folded 23×23. The two prepared models differ
only there, so ``(b1 DSC + their difference) / b1 DSC`` is the batch-1 ratio
that these convolutions alone imply, the floor for any work outside them.

Commands:
    .venv/bin/python benchmarks/bench_models.py                     # every pair; oracle for ConvNeXt-T
    .venv/bin/python benchmarks/bench_models.py --models convnext_tiny --repeats 7
    .venv/bin/python benchmarks/bench_models.py --models convnext_atto fastvit_t8 --oracle none
    .venv/bin/python benchmarks/bench_models.py --models convnext_tiny --profile   # where DCLS time goes
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import platform
import shlex
import sys
import time
from typing import Callable, Dict, List, Tuple

import timm
import torch
import torch.nn.functional as F

from audio_dcls.layers import Dcls2d, dcls_param_groups
from audio_dcls.layers.dcls_kernel import REFERENCE_VERSION_NAMES
from audio_dcls.models import audio_model_pairs, prepare_for_inference
from audio_dcls.models._dcls_swap import replace_module

INPUT = (1, 128, 1001)
TARGETS = {"convnext_tiny": {"train": 1.4, "infer_b1": 1.2}}  # issue 3, DCLS/DSC


def _best_interleaved(fns: Dict[str, Callable[[], None]], repeats: int, warmup: int = 1) -> Dict[str, float]:
    """Fastest seconds per call of each fn, calls interleaved round by round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return {k: min(v) for k, v in times.items()}


def _train_step_fn(model: torch.nn.Module, batch: int) -> Callable[[], None]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *INPUT, generator=g)
    y = (torch.rand(batch, model.num_classes, generator=g) < 0.05).float()
    opt = torch.optim.AdamW(dcls_param_groups(model, lr=1e-4, weight_decay=0.05))
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        opt.step()

    return step


def _infer_fn(model: torch.nn.Module, batch: int) -> Callable[[], None]:
    x = torch.randn(batch, *INPUT, generator=torch.Generator().manual_seed(1))

    def infer():
        with torch.inference_mode():
            model(x)

    return infer


def oracle_twin(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose DCLS layers are the reference package's, same parameters.

    Positions stay tied exactly as in ``model``: layers that share a P/Σ here
    share one reference P/Σ parameter there.
    """
    logging.getLogger().setLevel(logging.ERROR)  # the reference warns about its CUDA extension
    from DCLS.construct.modules import Dcls2d as RefDcls2d

    twin = copy.deepcopy(model)
    shared: Dict[int, RefDcls2d] = {}
    for name, layer in [(n, m) for n, m in twin.named_modules() if isinstance(m, Dcls2d)]:
        ref = RefDcls2d(
            layer.in_channels, layer.out_channels, layer.kernel_count,
            stride=layer.stride, padding=layer.padding, dilated_kernel_size=layer.dilated_kernel_size,
            groups=layer.groups, bias=layer.bias is not None,
            version=REFERENCE_VERSION_NAMES[layer.version], use_implicit_gemm=False,
        )
        with torch.no_grad():
            ref.weight.copy_(layer.weight)
            if layer.bias is not None:
                ref.bias.copy_(layer.bias)
            owner = shared.setdefault(id(layer.P), ref)
            if owner is ref:
                ref.P.copy_(layer.P)
                ref.SIG.copy_(layer.SIG)
            else:
                ref.P, ref.SIG = owner.P, owner.SIG
        ref.train(layer.training)
        replace_module(twin, name, ref)
    return twin


def _check_twin(model, twin) -> float:
    x = torch.randn(2, 1, 128, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return (model.eval()(x) - twin.eval()(x)).abs().max().item()


def _depthwise_calls(model: torch.nn.Module) -> Dict[str, Tuple[torch.nn.Module, torch.Tensor]]:
    """Each depthwise ``nn.Conv2d`` of ``model`` with the input it gets in one batch-1 forward."""
    calls, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels == m.out_channels > 1:
            hooks.append(m.register_forward_pre_hook(lambda mod, inp, name=name: calls.__setitem__(name, (mod, inp[0].clone()))))
    try:
        _infer_fn(model, 1)()
    finally:
        for h in hooks:
            h.remove()
    return calls


def _depthwise_only(dsc: torch.nn.Module, dcls: torch.nn.Module, repeats: int) -> Dict[str, float]:
    """Seconds of the convs that differ between the prepared twins (same name, other kernel size)."""
    a, b = _depthwise_calls(dsc), _depthwise_calls(dcls)
    names = [n for n in b if n in a and a[n][0].kernel_size != b[n][0].kernel_size]

    def run(calls):
        def fn():
            with torch.inference_mode():
                for n in names:
                    mod, x = calls[n]
                    mod(x)
        return fn

    best = _best_interleaved({"dsc": run(a), "dcls": run(b)}, repeats, warmup=2)
    return {"dw_convs": len(names), "dw_b1_dsc": best["dsc"], "dw_b1_dcls": best["dcls"]}


def bench_pair(dsc_name: str, dcls_name: str, args) -> Dict[str, float]:
    torch.manual_seed(0)
    dsc, dcls = timm.create_model(dsc_name), timm.create_model(dcls_name)
    row = {}
    train = _best_interleaved(
        {"dsc": _train_step_fn(dsc, 4), "dcls": _train_step_fn(dcls, 4)}, args.repeats)
    row["train_dsc"], row["train_dcls"] = train["dsc"], train["dcls"]
    family = dsc_name[: -len("_audio")]
    if args.oracle == "all" or family in args.oracle:
        twin = oracle_twin(dcls)
        diff = _check_twin(dcls, twin)
        if diff > 1e-3:
            raise RuntimeError(f"oracle twin of {dcls_name} disagrees with it (max |Δ| = {diff:.2e})")
        row["train_oracle"] = _best_interleaved({"oracle": _train_step_fn(twin, 4)}, args.oracle_repeats)["oracle"]
        del twin
    prepare_for_inference(dsc)
    prepare_for_inference(dcls)
    for batch, reps in ((1, args.repeats * 4), (8, args.repeats)):
        inf = _best_interleaved({"dsc": _infer_fn(dsc, batch), "dcls": _infer_fn(dcls, batch)}, reps, warmup=2)
        row[f"infer_b{batch}_dsc"], row[f"infer_b{batch}_dcls"] = inf["dsc"], inf["dcls"]
    row.update(_depthwise_only(dsc, dcls, args.repeats * 4))
    return row


def profile_pair(dsc_name: str, dcls_name: str, rows: int = 18) -> None:
    """Top operators of one training step of each model, by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    for name in (dsc_name, dcls_name):
        torch.manual_seed(0)
        step = _train_step_fn(timm.create_model(name), 4)
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(f"\n# one training step of {name}, batch 4")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=44))


def _fmt_table(results: List[Tuple[str, Dict[str, float]]]) -> str:
    head = ("family", "b1 DSC ms", "b1 DCLS ms", "b1 ratio", "b8 DSC ms", "b8 DCLS ms", "b8 ratio",
            "train DSC s", "train DCLS s", "train ratio", "oracle s", "oracle/DSC")
    lines = [head]
    for family, r in results:
        oracle = r.get("train_oracle")
        lines.append((
            family,
            f"{r['infer_b1_dsc'] * 1e3:.1f}", f"{r['infer_b1_dcls'] * 1e3:.1f}", f"{r['infer_b1_dcls'] / r['infer_b1_dsc']:.2f}",
            f"{r['infer_b8_dsc'] * 1e3:.0f}", f"{r['infer_b8_dcls'] * 1e3:.0f}", f"{r['infer_b8_dcls'] / r['infer_b8_dsc']:.2f}",
            f"{r['train_dsc']:.3f}", f"{r['train_dcls']:.3f}", f"{r['train_dcls'] / r['train_dsc']:.2f}",
            "-" if oracle is None else f"{oracle:.2f}", "-" if oracle is None else f"{oracle / r['train_dsc']:.1f}",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = [" | ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]
    out.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv=None) -> int:
    pairs = audio_model_pairs()
    families = [dsc[: -len("_audio")] for dsc, _ in pairs]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=None, metavar="FAMILY",
                        help=f"family sizes to run (default: all): {' '.join(families)}")
    parser.add_argument("--repeats", type=int, default=5, help="timed training steps and batch-8 inferences (batch 1: 4x)")
    parser.add_argument("--oracle", nargs="+", default=["convnext_tiny"],
                        help="families whose oracle-built DCLS model is timed too, 'all' or 'none'")
    parser.add_argument("--oracle-repeats", type=int, default=2, help="timed oracle training steps (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--profile", action="store_true", help="print the top operators of one training step instead")
    args = parser.parse_args(argv)
    args.oracle = "all" if args.oracle == ["all"] else [o for o in args.oracle if o != "none"]
    selected = args.models or families
    unknown = sorted(set(selected) - set(families))
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {families}")
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, load average at start {os.getloadavg()[0]:.2f}")
    print(f"# input {INPUT}; prepared-form inference, training step batch 4 (AdamW); best of interleaved runs")

    # Paper sizes first, then the small CPU variants.
    order = sorted((f for f in families if f in selected), key=lambda f: (f.split("_")[1] in ("atto", "t8"), f))
    results = []
    for family in order:
        dsc_name, dcls_name = dict(zip(families, pairs))[family]
        if args.profile:
            profile_pair(dsc_name, dcls_name)
            continue
        row = bench_pair(dsc_name, dcls_name, args)
        results.append((family, row))
        print(f"# {family}: done", flush=True)
    if results:
        print()
        print(_fmt_table(results))
        for family, r in results:
            extra = r["dw_b1_dcls"] - r["dw_b1_dsc"]
            print(f"# {family} batch 1: its {r['dw_convs']} depthwise convs alone take {r['dw_b1_dsc'] * 1e3:.1f} ms (DSC) "
                  f"and {r['dw_b1_dcls'] * 1e3:.1f} ms (DCLS), so they imply a b1 ratio of "
                  f"{(r['infer_b1_dsc'] + extra) / r['infer_b1_dsc']:.2f} (measured {r['infer_b1_dcls'] / r['infer_b1_dsc']:.2f})")
        for family, r in results:
            if family in TARGETS:
                t = TARGETS[family]
                print(f"# {family} targets: train DCLS/DSC <= {t['train']} (measured {r['train_dcls'] / r['train_dsc']:.2f}), "
                      f"inference b1 DCLS/DSC <= {t['infer_b1']} (measured {r['infer_b1_dcls'] / r['infer_b1_dsc']:.2f})")
    print(f"# load average at end {os.getloadavg()[0]:.2f} (timings are only comparable on an otherwise idle machine)")
    print("# reproduce: " + " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/bench_models.py", *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
