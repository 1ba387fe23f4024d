"""Cost of the paper's training data path, against the training step it feeds.

Section ``device`` (on-device cost): for one batch of 10 s, 32 kHz waveforms already
on the device, the work the trainer adds per batch before the model sees it:

* drawing the per-clip parameters on a CPU generator and moving them to the device
  (``DclsAudioAugment.sample``, ``AugmentParams.to``),
* roll + speed perturbation (one gather, ``augment_waveform``),
* the power spectrogram (``LogMel.power_spectrogram``),
* erasing (``augment_power``),
* mel, dB, normalisation (``LogMel.from_power``),
* mixup with label smoothing (``audio_dcls.augment.mixup``, λ ~ Beta(0.8, 0.8)),

timed as a whole and stage by stage, against one ConvNeXt-T-DCLS training step at the
same batch on the same device in the same run: forward, BCE-with-logits on 527
labels, backward, AdamW over ``dcls_param_groups`` -- as the trainer runs it
(channels_last; bf16 autocast on CUDA). The ratio data path / step is the share
of a step the data path would add if it ran in line; the stage that takes the
most is what bounds it. Interleaved rounds, fastest kept (as ``timeit`` advises).
Target (issue 15): <= 10 % on the CPU.

A ``loader`` section (throughput of the waveform stores) joins later.

Commands:
    .venv/bin/python benchmarks/bench_datapath.py                        # CPU: batch 4, 2 threads
    .venv/bin/python benchmarks/bench_datapath.py --device cuda          # one GPU: batch 64
    .venv/bin/python benchmarks/bench_datapath.py --device cuda --batch 128 --repeats 20
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import timm  # noqa: E402

import audio_dcls  # noqa: E402,F401  (registers the audio models with timm)
from audio_dcls.augment import DclsAudioAugment, DclsAudioAugmentConfig, mixup  # noqa: E402
from audio_dcls.features import LogMel  # noqa: E402
from audio_dcls.layers import dcls_param_groups  # noqa: E402

TARGET_RATIO = 0.10  # issue 15: data path <= 10 % of a training step on the CPU
NUM_CLASSES = 527
CLIP_SAMPLES = 320000  # 10 s at 32 kHz
MIXUP_ALPHA, LABEL_SMOOTHING = 0.8, 0.1  # the paper's recipe


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_interleaved(fns: Dict[str, Callable[[], object]], repeats: int, device: torch.device, warmup: int = 2) -> Dict[str, float]:
    """Fastest seconds per call of each fn (device work included), calls interleaved round by round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - start)
    return {k: min(v) for k, v in times.items()}


def training_step_fn(model_name: str, batch: int, frames: int, device: torch.device, channels_last: bool, amp: bool) -> Callable[[], None]:
    """One ConvNeXt-T-DCLS training step as the trainer runs it, on a fixed log-mel batch."""
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=NUM_CLASSES).to(device).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 128, frames, generator=g).to(device)
    y = (torch.rand(batch, NUM_CLASSES, generator=g) < 0.05).float().to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(dcls_param_groups(model, lr=1e-4, weight_decay=0.05))
    use_amp = amp and device.type == "cuda"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = F.binary_cross_entropy_with_logits(model(x).float(), y)
        loss.backward()
        opt.step()

    return step


def data_path_fns(batch: int, device: torch.device) -> Dict[str, Callable[[], object]]:
    """The data path as a whole ('total') and each of its stages on its own input."""
    front_end = LogMel().to(device)
    aug = DclsAudioAugment(front_end, DclsAudioAugmentConfig()).train()
    g = torch.Generator().manual_seed(1)
    wave = (torch.randint(-(2**15), 2**15, (batch, CLIP_SAMPLES), generator=g) / 2**15).to(device)  # int16 / 2**15
    y = (torch.rand(batch, NUM_CLASSES, generator=g) < 0.05).float().to(device)
    lam_rng = np.random.default_rng(0)
    # the stages alone run on parameters where every transform acts (the dearest case)
    every = DclsAudioAugment(front_end, DclsAudioAugmentConfig(speed_p=1.0, erase_p=1.0)).sample(batch, CLIP_SAMPLES, g).to(device)
    power = front_end.power_spectrogram(wave)
    logmel = front_end.from_power(power)

    def total():
        params = aug.sample(batch, CLIP_SAMPLES, g).to(device)
        x = aug(wave, params=params)
        return mixup(x, y, float(lam_rng.beta(MIXUP_ALPHA, MIXUP_ALPHA)), LABEL_SMOOTHING)

    return {
        "total": total,
        "sample + to(device)": lambda: aug.sample(batch, CLIP_SAMPLES, g).to(device),
        "roll + speed (gather)": lambda: aug.augment_waveform(wave, every),
        "power spectrogram": lambda: front_end.power_spectrogram(wave),
        "erase": lambda: aug.augment_power(power, every),
        "mel + dB + normalise": lambda: front_end.from_power(power),
        "mixup + smoothing": lambda: mixup(logmel, y, 0.3, LABEL_SMOOTHING),
        "plain front end (eval path)": lambda: front_end(wave),
    }


def measure_device_cost(args, device: torch.device) -> Dict[str, float]:
    frames = CLIP_SAMPLES // 320 + 1
    step = training_step_fn(args.model, args.batch, frames, device, not args.no_channels_last, not args.no_amp)
    fns = {"training step": step, **data_path_fns(args.batch, device)}
    with torch.no_grad():  # the data path builds no graph in the trainer either
        data = best_interleaved({k: v for k, v in fns.items() if k != "training step"}, args.repeats, device)
    data.update(best_interleaved({"training step": step}, max(2, args.step_repeats), device, warmup=1))
    return data


def report_device_cost(t: Dict[str, float], args, device: torch.device) -> float:
    step, total = t["training step"], t["total"]
    ratio = total / step
    print(f"\n## on-device cost, batch {args.batch} on {device.type}")
    print(f"{'':30s} {'ms':>10s} {'/ step':>8s}")
    for name, sec in t.items():
        print(f"{name:30s} {sec * 1e3:10.2f} {sec / step:8.2%}")
    stages = {k: v for k, v in t.items() if k not in ("training step", "total", "plain front end (eval path)")}
    bound = max(stages, key=stages.get)
    print(f"# data path / training step = {ratio:.2%} (target <= {TARGET_RATIO:.0%} on the CPU: "
          f"{'met' if ratio <= TARGET_RATIO else 'NOT met'})")
    print(f"# bounded by '{bound}': {stages[bound] / sum(stages.values()):.0%} of the stages' sum "
          f"({sum(stages.values()) * 1e3:.2f} ms; the whole, timed at once: {total * 1e3:.2f} ms); "
          f"the plain front end alone is {t['plain front end (eval path)'] / step:.2%} of a step")
    return ratio


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--section", nargs="+", default=["device"], choices=["device"], help="measurements to run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--batch", type=int, default=None, help="clips per batch (default: 4 on CPU, 64 on CUDA)")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds of the data-path stages")
    parser.add_argument("--step-repeats", type=int, default=3, help="timed training steps (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    parser.add_argument("--model", default="convnext_tiny_dcls_audio", help="timm model of the training step")
    parser.add_argument("--no-channels-last", action="store_true", help="NCHW model and input (the trainer's default is NHWC)")
    parser.add_argument("--no-amp", action="store_true", help="float32 step on CUDA (the trainer's default is bf16 autocast)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    args.batch = args.batch or (64 if device.type == "cuda" else 4)
    torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"# torch {torch.__version__}, timm {timm.__version__}, CPU {cpu_model()}, {where}, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    if "device" in args.section:
        report_device_cost(measure_device_cost(args, device), args, device)
    print(f"# load average at end {os.getloadavg()[0]:.2f} (timings are only comparable on an otherwise idle machine)")
    print("# reproduce: " + " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/bench_datapath.py", *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
