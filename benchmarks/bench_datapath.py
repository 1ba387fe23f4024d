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

Section ``loader`` (what the CPU workers cost): clips/s of reading training batches
of 64 -- the DataLoader items and ``collate_items``, exactly as the trainer reads them
-- from a waveform store (int16, 640 KB a clip) and a log-mel store (fp16, 256 KB),
memory-mapped with a warm page cache, against decoding the same clips from FLAC on
the fly (32 kHz mono, the cheapest case: no resampling), as training on a CSV does, and
decoding + the front end per clip on the worker (DCLS-Audio's data path, what a
worker did before the front end moved to the device): in the process (read +
collate), and through a DataLoader with 1 and 2 persistent workers (clips/s per worker,
an epoch of random batches over ``--clips`` clips timed whole after a warm-up epoch).
And the ingest of a PANNs HDF5 pack into a waveform store (its int16 rows copied)
against building the same waveform store by decoding the FLAC files. The clips are
mini-AudioSet mixtures (pipelines.make_mini_audioset), generated once into
``.bench/datapath/``. Targets (issue 15): a waveform store feeds >= 3,000 clips/s per
worker and >= 100x on-the-fly FLAC decoding.

Commands:
    .venv/bin/python benchmarks/bench_datapath.py                        # both sections, CPU: batch 4, 2 threads
    .venv/bin/python benchmarks/bench_datapath.py --section loader --clips 512
    .venv/bin/python benchmarks/bench_datapath.py --section device --device cuda          # one GPU: batch 64
    .venv/bin/python benchmarks/bench_datapath.py --section device --device cuda --batch 128 --repeats 20
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

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


# ----------------------------------------------------------------------------------
# section "loader": what the CPU workers cost
# ----------------------------------------------------------------------------------
LOADER_TARGET_CLIPS_PER_S = 3000.0  # issue 15: per worker, from a waveform store
LOADER_TARGET_RATIO = 100.0  # ... and this many times on-the-fly FLAC decoding
LOADER_BATCH = 64
INGEST_SHARD = 128  # clips per shard in the ingest timing (both sides; a full AudioSet build uses up to 419)


def make_clip_set(folder: Path, count: int) -> Tuple[Path, Path]:
    """``count`` 10 s mini-AudioSet mixtures as 32 kHz mono FLAC + a path,labels CSV, and
    a PANNs pack of the same clips (their int16 samples); made once, then reused."""
    import soundfile as sf

    from pipelines.make_mini_audioset import CLASSES, ClipSpec, render_clip
    from pipelines.sources import write_panns_hdf5

    csv_path, pack = folder / "clips.csv", folder / "clips.h5"
    if csv_path.exists() and pack.exists() and len(list((folder / "audio").glob("*.flac"))) == count:
        return csv_path, pack
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "audio").mkdir(parents=True)
    rows, waves, targets = ["path,labels"], np.zeros((count, CLIP_SAMPLES), np.int16), np.zeros((count, NUM_CLASSES), bool)
    for i in range(count):
        classes = (i % len(CLASSES), (i * 7 + 3) % len(CLASSES))
        x = render_clip(ClipSpec(f"b{i}", 0.0, classes, (4321, i, 0), 10.0), sr=32000)
        sf.write(folder / "audio" / f"clip{i:05d}.flac", x, 32000, subtype="PCM_16")
        waves[i] = np.clip(np.round(x.astype(np.float64) * 32768), -32768, 32767)
        rows.append(f"audio/clip{i:05d}.flac,c{classes[0]};c{classes[1]}")
        targets[i, list(classes)] = True
    write_panns_hdf5(pack, [f"clip{i:05d}.wav" for i in range(count)], waves, targets)
    (folder / "clips.csv").write_text("\n".join(rows) + "\n")
    return csv_path, pack


def build_stores(folder: Path, csv_path: Path, workers: int) -> Dict[str, Path]:
    """The waveform and log-mel stores of the clip set (kept: a rerun reuses them)."""
    from pipelines.precompute import build_feature_store
    from pipelines.sources import CustomCsvSource

    out = {}
    for kind in ("waveform", "logmel"):
        out[kind] = folder / f"store_{kind}"
        with CustomCsvSource(csv_path) as source:
            build_feature_store(source, out[kind], workers=workers, kind=kind, progress=False)
    return out


def warm_page_cache(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass


class DecodeAndFrontEnd(torch.utils.data.Dataset):
    """DCLS-Audio's worker: decode a clip, then its log-mel, per clip on the CPU."""

    def __init__(self, items):
        self.items, self.front_end = items, None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        if self.front_end is None:
            self.front_end = LogMel()
        x, y, idx, skip, warned = self.items[i]
        with torch.inference_mode():
            m = self.front_end(x.float().unsqueeze(0) / 2**15)[0]
        return m, y, idx, skip, warned


def random_batches(num_items: int, batches: int, seed: int = 0) -> List[List[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, num_items, LOADER_BATCH).tolist() for _ in range(batches)]


def in_process_rate(dataset, batches: List[List[int]]) -> float:
    """Clips/s of reading items and collating them in this process (no workers)."""
    from pipelines.data import collate_items

    collate_items([dataset[i] for i in batches[0]])  # maps opened, buffers touched
    t0 = time.perf_counter()
    for b in batches[1:]:
        collate_items([dataset[i] for i in b])
    return LOADER_BATCH * (len(batches) - 1) / (time.perf_counter() - t0)


class _Batches:
    """A batch sampler whose batches can be swapped between epochs (persistent workers keep running)."""

    def __init__(self, batches: List[List[int]]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def loader_rate(dataset, batches: List[List[int]], workers: int) -> float:
    """Clips/s through a DataLoader with ``workers`` persistent workers: a first epoch of two
    batches starts them and opens the maps, the second epoch (``batches``) is timed whole."""
    from pipelines.data import collate_items

    sampler = _Batches(batches[:2])
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate_items, persistent_workers=True)
    for _ in loader:
        pass
    sampler.batches = batches
    t0, n = time.perf_counter(), 0
    for x, *_ in loader:
        n += x.shape[0]
    seconds = time.perf_counter() - t0
    del loader  # stops the workers
    return n / seconds


def batch_bounds(dataset, batch: List[int], repeats: int = 5) -> Dict[str, float]:
    """Seconds per batch of its two parts in a worker: copying the clips out of the page cache
    (into a reused buffer), and the same into a fresh shared-memory batch, as torch's collate
    allocates one in a worker for every batch (``_new_shared``: fallocated, then faulted in)."""
    views = [dataset[i][0] for i in batch]
    shape, numel = (len(views), *views[0].shape), len(views) * views[0].numel()
    reused = torch.empty(shape, dtype=views[0].dtype)

    def fresh_shared():
        storage = views[0]._typed_storage()._new_shared(numel)
        return views[0].new(storage).view(shape)

    times = {"copy into a reused buffer": [], "copy into a fresh shared batch": []}
    for _ in range(repeats):
        for name, out in (("copy into a reused buffer", lambda: reused), ("copy into a fresh shared batch", fresh_shared)):
            t0 = time.perf_counter()
            torch.stack(views, out=out())
            times[name].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


def ingest_rates(csv_path: Path, pack: Path, count: int) -> Dict[str, float]:
    """Clips/s (wall, one process) of building a waveform store: from the pack (copy) and from FLAC (decode)."""
    from pipelines.precompute import build_feature_store
    from pipelines.sources import CustomCsvSource, PannsHdf5Source

    rates = {}
    for name, open_source in (("PANNs pack -> waveform store (copy)", lambda: PannsHdf5Source(pack)),
                              ("FLAC -> waveform store (decode)", lambda: CustomCsvSource(csv_path))):
        with tempfile.TemporaryDirectory(prefix="bench_datapath_") as out, open_source() as source:
            t0 = time.perf_counter()
            report = build_feature_store(source, out, workers=1, kind="waveform", shard_size=INGEST_SHARD, progress=False)
            rates[name] = report.written / (time.perf_counter() - t0)
    return rates


def measure_loader(args) -> Dict[str, Dict[str, float]]:
    from pipelines.data import open_data

    folder = ROOT / ".bench" / "datapath"
    csv_path, pack = make_clip_set(folder / f"clips{args.clips}", args.clips)
    stores = build_stores(folder / f"clips{args.clips}", csv_path, workers=max(1, os.cpu_count() or 1))
    warm_page_cache(folder / f"clips{args.clips}")
    flac = open_data(str(csv_path))
    sources = {
        "waveform store": (open_data(str(stores["waveform"])).dataset, args.loader_batches),
        "log-mel store": (open_data(str(stores["logmel"])).dataset, args.loader_batches),
        "FLAC, decoded on the fly": (flac.dataset, args.flac_batches),
        "FLAC, decoded + front end per clip": (DecodeAndFrontEnd(flac.dataset), args.flac_batches),
    }
    torch.set_num_threads(1)  # one core per worker; the workers inherit it
    rates: Dict[str, Dict[str, float]] = {}
    for name, (ds, count) in sources.items():
        batches = random_batches(len(ds), count + 1)
        rates[name] = {"in process": in_process_rate(ds, batches)}
        for w in (1, 2):
            rates[name][f"{w} worker{'s' if w > 1 else ''}"] = loader_rate(ds, batches[1:], w) / w
    rates["bounds"] = {f"{kind} store: {k}": v for kind, name in (("waveform", "waveform store"), ("log-mel", "log-mel store"))
                       for k, v in batch_bounds(sources[name][0], random_batches(len(sources[name][0]), 1, seed=1)[0]).items()}
    rates["ingest"] = ingest_rates(csv_path, pack, args.clips)
    torch.set_num_threads(args.threads)
    return rates


def report_loader(rates: Dict[str, Dict[str, float]], args) -> float:
    ingest, bounds = rates.pop("ingest"), rates.pop("bounds")
    cols = list(next(iter(rates.values())))
    print(f"\n## loader: clips/s per CPU worker, batches of {LOADER_BATCH}, {args.clips} clips of 10 s, warm page cache")
    print(f"{'':36s}" + "".join(f"{c:>14s}" for c in cols))
    for name, r in rates.items():
        print(f"{name:36s}" + "".join(f"{r[c]:14.0f}" for c in cols))
    wave, flac, dcls = rates["waveform store"], rates["FLAC, decoded on the fly"], rates["FLAC, decoded + front end per clip"]
    worst = min(wave[c] for c in cols if c != "in process")
    print(f"# waveform store / FLAC decoding = " + ", ".join(f"{wave[c] / flac[c]:.0f}x ({c})" for c in cols)
          + "; / decoding + front end per clip (DCLS-Audio's worker) = " + ", ".join(f"{wave[c] / dcls[c]:.0f}x ({c})" for c in cols))
    print(f"# log-mel store / FLAC decoding = " + ", ".join(f"{rates['log-mel store'][c] / flac[c]:.0f}x ({c})" for c in cols))
    ratio = min(wave[c] / flac[c] for c in cols)
    print(f"# target: waveform store >= {LOADER_TARGET_CLIPS_PER_S:,.0f} clips/s per worker ({'met' if worst >= LOADER_TARGET_CLIPS_PER_S else 'NOT met'}: "
          f"{worst:,.0f} with the slower worker count) and >= {LOADER_TARGET_RATIO:.0f}x on-the-fly FLAC decoding "
          f"({'met' if ratio >= LOADER_TARGET_RATIO else 'NOT met'}: {ratio:.0f}x at worst)")
    print(f"# bounded by: a store read is one copy of each clip out of the page cache into the batch; in a worker the batch is a fresh "
          f"shared-memory buffer per batch of {LOADER_BATCH} (torch's collate), whose pages are allocated and faulted in every time:")
    for name, sec in bounds.items():
        print(f"#   {name:52s} {sec * 1e3:7.2f} ms a batch = {LOADER_BATCH / sec:8,.0f} clips/s")
    print(f"# FLAC is bounded by decoding ({1e3 / flac['in process']:.1f} ms a clip in process; 32 kHz mono, so no resampling)")
    copy, decode = ingest.values()
    print(f"\n## ingest into a waveform store, one process: {', '.join(f'{k} {v:,.0f} clips/s' for k, v in ingest.items())}; "
          f"copy / decode = {copy / decode:.1f}x (fsynced shards and checksums included on both sides)")
    return ratio


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--section", nargs="+", default=["loader", "device"], choices=["loader", "device"], help="measurements to run")
    parser.add_argument("--clips", type=int, default=256, help="loader: clips in the generated set (cached in .bench/datapath/)")
    parser.add_argument("--loader-batches", type=int, default=40, help="loader: timed batches from each store")
    parser.add_argument("--flac-batches", type=int, default=3, help="loader: timed batches decoded from FLAC")
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
    if "loader" in args.section:
        report_loader(measure_loader(args), args)
    if "device" in args.section:
        report_device_cost(measure_device_cost(args, device), args, device)
    print(f"# load average at end {os.getloadavg()[0]:.2f} (timings are only comparable on an otherwise idle machine)")
    print("# reproduce: " + " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/bench_datapath.py", *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
