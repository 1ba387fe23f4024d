"""DCLS layer speed on the CPU, as ratios against baselines timed in the same run.

(a) kernel construction, forward + backward: ours vs the reference ``dcls``
    0.1.1 package, depthwise, K = 26 taps, 23×23, C = 96 … 768;
(b) one depthwise DCLS layer (26 taps, 23×23) forward + backward at input
    (8, 96, 64, 62): ours vs ``nn.Conv2d`` depthwise 7×7 and 23×23 and vs the
    reference layer.

Run:  .venv/bin/python benchmarks/bench_dcls.py [--threads 2] [--repeats 5]
(``make bench`` runs it with the defaults.)
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time

import torch
from torch import nn

from audio_dcls.layers import Dcls2d

logging.getLogger().setLevel(logging.ERROR)  # the oracle warns about its CUDA extension


def median_ms(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def copy_params(ours: Dcls2d, ref: nn.Module) -> None:
    with torch.no_grad():
        for name in ("weight", "P", "SIG", "bias"):
            getattr(ref, name).copy_(getattr(ours, name))


def bench_kernel_build(oracle, repeats: int) -> list:
    rows = []
    for channels in (96, 192, 384, 768):
        ours = Dcls2d(channels, channels, 26, 23, padding=11, groups=channels)
        ref = oracle.Dcls2d(channels, channels, kernel_count=26, dilated_kernel_size=23, padding=11, groups=channels, version="gauss")
        copy_params(ours, ref)

        def run_ours():
            ours.kernel_builder(ours.weight, ours.P, ours.SIG).sum().backward()

        def run_ref():
            ref.DCK(ref.weight, ref.P, ref.SIG).sum().backward()

        t_ours = median_ms(run_ours, repeats)
        t_ref = median_ms(run_ref, max(2, repeats // 2))
        rows.append((channels, t_ours, t_ref))
    return rows


def bench_layer(oracle, repeats: int, shape=(8, 96, 64, 62)) -> dict:
    channels = shape[1]
    x = torch.randn(shape, requires_grad=True)
    layers = {
        "dcls (ours)": Dcls2d(channels, channels, 26, 23, padding=11, groups=channels),
        "conv 7x7": nn.Conv2d(channels, channels, 7, padding=3, groups=channels),
        "conv 23x23": nn.Conv2d(channels, channels, 23, padding=11, groups=channels),
    }
    if oracle is not None:
        ref = oracle.Dcls2d(channels, channels, kernel_count=26, dilated_kernel_size=23, padding=11, groups=channels, version="gauss")
        copy_params(layers["dcls (ours)"], ref)
        layers["dcls (reference)"] = ref
    out = {}
    for name, layer in layers.items():
        def step(layer=layer):
            layer(x).sum().backward()

        reps = repeats if "23" not in name and "reference" not in name else max(2, repeats // 2)
        out[name] = median_ms(step, reps)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    try:
        from DCLS.construct import modules as oracle
    except ImportError:
        oracle = None
        print("reference package `dcls` not installed: reference columns skipped (pip install dcls==0.1.1)")

    print(f"# DCLS benchmark  torch {torch.__version__}  threads {args.threads}")
    ok = True
    if oracle is not None:
        print("\n(a) kernel build fwd+bwd, depthwise, K=26, D=23")
        print(f"{'C':>5} {'ours ms':>9} {'reference ms':>13} {'speed-up':>9}")
        for channels, t_ours, t_ref in bench_kernel_build(oracle, args.repeats):
            speedup = t_ref / t_ours
            ok &= speedup >= 30
            print(f"{channels:>5} {t_ours:>9.2f} {t_ref:>13.2f} {speedup:>8.1f}x")

    print("\n(b) depthwise layer fwd+bwd at input (8, 96, 64, 62)")
    times = bench_layer(oracle, args.repeats)
    base = times["dcls (ours)"]
    print(f"{'layer':<18} {'ms':>9} {'ours / this':>12}")
    for name, t in times.items():
        print(f"{name:<18} {t:>9.1f} {base / t:>12.2f}")
    ratio_7 = base / times["conv 7x7"]
    ok &= ratio_7 <= 1.5
    print(f"\nours / conv 7x7 = {ratio_7:.2f} (target <= 1.5)")
    if "dcls (reference)" in times:
        speedup = times["dcls (reference)"] / base
        ok &= speedup >= 8
        print(f"reference / ours = {speedup:.1f}x (target >= 8)")
    print(f"targets {'met' if ok else 'NOT met'}")
    print("reproduce: .venv/bin/python benchmarks/bench_dcls.py --threads", args.threads, "--repeats", args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
