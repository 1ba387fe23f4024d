"""Throughput and latency of the tagging service: dynamic batching against max_batch_size=1.

Starts the real service (``python -m service`` in a subprocess, on 127.0.0.1),
then for each number of concurrent clients (1, 4, 16, 32) drives it for a fixed
time with 10 s clips over HTTP (each client sends its next clip as soon as the
previous answer arrives) and reports requests per second and the p50/p99
latency. The same run repeats with batching off (``MAX_BATCH_SIZE=1``), the
baseline, on an identical server; the ratio at 16 clients is printed last.

The model is a release folder under --models-dir, or (default) a
random-initialised ``convnext_atto_dcls_audio`` (3.6 M parameters, the small
CPU model) saved as a release in a temporary folder: scores are meaningless
but the compute per clip is that of the trained model.

CPU (as `make bench` runs it)::

    .venv/bin/python benchmarks/bench_service.py

Single GPU::

    .venv/bin/python benchmarks/bench_service.py --device cuda --threads 4 --max-batch-size 32

Last, with both servers stopped, the run times what the inference worker
itself computes (front end + prepared model, no HTTP) at batch 1 and at the
mean batch size the batching server ran at 16 clients (or at its busiest
level), in this process with the same threads: the per-clip gain between the
two bounds what batching can win end to end.

Targets: batching at 16 clients >= 2x the throughput of max_batch_size=1, and
its p99 <= 2x its p50.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


def build_release(root: Path, arch: str) -> Path:
    import timm
    import torch

    import audio_dcls.models  # noqa: F401
    from audio_dcls.checkpoint import save_release
    from audio_dcls.features import LogMelConfig
    from audio_dcls.labels import audioset_vocabulary

    torch.manual_seed(0)
    vocab = audioset_vocabulary()
    model = timm.create_model(arch)
    save_release(root / arch.replace("_", "-"), model, arch, {"num_classes": len(vocab)}, LogMelConfig(), list(zip(vocab.mids, vocab.display_names)), "audioset-527", {"note": "random weights, for benchmarking"})
    return root


def worker_batch_gain(models_dir: Path, batch: int, threads: int, device: str, clip_seconds: float, repeats: int = 5) -> tuple[float, float]:
    """Best seconds per clip of the worker's computation at batch 1 and at ``batch``."""
    import torch

    from audio_dcls.inference import prepare_release
    from service.registry import find_release_folders

    torch.set_num_threads(threads)
    prepared = prepare_release(find_release_folders(models_dir)[0], device)  # what the service's registry loads
    tagger = prepared.model
    samples = int(clip_seconds * prepared.sample_rate)
    inputs = {b: torch.randn(b, samples, device=device) * 0.1 for b in (1, batch)}
    best = {b: float("inf") for b in inputs}
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first round warms up
            for b, x in inputs.items():
                t0 = time.perf_counter()
                tagger(x)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                best[b] = min(best[b], (time.perf_counter() - t0) / b)
    return best[1], best[batch]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m service` in a subprocess, started with the given settings."""

    def __init__(self, models_dir: Path, env_overrides: dict):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env.update({"MODELS_DIR": str(models_dir), "HOST": "127.0.0.1", "PORT": str(self.port), "LOG_LEVEL": "warning"})
        env.update({k: str(v) for k, v in env_overrides.items()})
        self.env_overrides = env_overrides
        self.proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env)

    def wait_ready(self, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.proc.returncode}")
            try:
                r = httpx.get(self.url + "/health/ready", timeout=2)
                if r.status_code == 200:
                    return
                if r.json()["error"]["code"] == "no_models":
                    raise RuntimeError(r.json()["error"]["message"])
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError("the server did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def drive(url: str, clip: bytes, clients: int, seconds: float, headers: dict) -> dict:
    """``clients`` closed-loop clients for ``seconds``; latencies of requests completed in the window."""
    latencies, errors = [], []
    lock = threading.Lock()
    start_barrier = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client():
        with httpx.Client(base_url=url, timeout=300, headers=headers) as c:
            start_barrier.wait()
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at[0]:
                    return
                r = c.post("/v1/tag", files={"file": ("clip.wav", clip, "audio/wav")}, data={"top_k": "5"})
                t1 = time.perf_counter()
                with lock:
                    if r.status_code == 200:
                        if t1 <= stop_at[0]:
                            latencies.append(t1 - t0)
                    else:
                        errors.append(r.status_code)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    t_start = time.perf_counter()
    stop_at[0] = t_start + seconds
    start_barrier.wait()
    for t in threads:
        t.join()
    lat = np.array(latencies)
    return {
        "clients": clients,
        "done": len(lat),
        "rps": len(lat) / seconds,
        "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "errors": len(errors),
    }


def batch_stats(url: str, headers: dict) -> tuple[float, float]:
    total = count = 0.0
    for line in httpx.get(url + "/metrics", headers=headers, timeout=10).text.splitlines():
        if line.startswith("audio_dcls_batch_size_sum"):
            total += float(line.split()[-1])
        elif line.startswith("audio_dcls_batch_size_count"):
            count += float(line.split()[-1])
    return total, count


def run_mode(name: str, models_dir: Path, overrides: dict, clip: bytes, levels, seconds: float, warmup: float, headers: dict):
    server = Server(models_dir, overrides)
    try:
        server.wait_ready()
        drive(server.url, clip, max(levels), warmup, headers)  # first requests pay for allocations
        rows = []
        for n in levels:
            s0, c0 = batch_stats(server.url, headers)
            row = drive(server.url, clip, n, seconds, headers)
            s1, c1 = batch_stats(server.url, headers)
            row["mean_batch"] = (s1 - s0) / (c1 - c0) if c1 > c0 else float("nan")
            rows.append(row)
            print(
                f"{name:>12} clients={n:<3d} {row['rps']:7.2f} req/s  p50 {row['p50'] * 1000:8.1f} ms  p99 {row['p99'] * 1000:8.1f} ms"
                f"  mean batch {row['mean_batch']:5.1f}  done {row['done']:4d}  errors {row['errors']}",
                flush=True,
            )
        return rows
    finally:
        server.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-dir", type=Path, help="release folders to serve (default: a random-initialised --arch in a temp folder)")
    p.add_argument("--arch", default="convnext_atto_dcls_audio", help="model built when --models-dir is not given")
    p.add_argument("--clients", default="1,4,16,32", help="concurrency levels")
    p.add_argument("--seconds", type=float, default=8.0, help="measurement time per level")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured load before the first level")
    p.add_argument("--max-batch-size", type=int, default=16, help="MAX_BATCH_SIZE of the batching server")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="MAX_WAIT_MS of the batching server")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="TORCH_THREADS of both servers (default: all cores)")
    p.add_argument("--device", default="cpu", help="DEVICE of both servers (cpu, cuda)")
    p.add_argument("--clip-seconds", type=float, default=10.0)
    args = p.parse_args(argv)
    levels = [int(x) for x in args.clients.split(",")]

    rng = np.random.default_rng(0)
    sr = 32000
    t = np.arange(int(args.clip_seconds * sr)) / sr
    y = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, y, sr, format="WAV", subtype="PCM_16")
    clip = buf.getvalue()
    headers = {"Authorization": f"Bearer {os.environ['API_KEY']}"} if os.environ.get("API_KEY") else {}

    common = {"TORCH_THREADS": args.threads, "DEVICE": args.device, "QUEUE_SIZE": max(64, 2 * max(levels))}
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        models_dir = args.models_dir or build_release(Path(tmp), args.arch)
        load_before = os.getloadavg()
        print(f"# {args.arch if not args.models_dir else args.models_dir}, device {args.device}, TORCH_THREADS={args.threads}, {os.cpu_count()} cores, "
              f"{args.clip_seconds:g} s clips, {args.seconds:g} s per level, load average before {load_before[0]:.2f}", flush=True)
        batched = run_mode("batching", models_dir, dict(common, MAX_BATCH_SIZE=args.max_batch_size, MAX_WAIT_MS=args.max_wait_ms), clip, levels, args.seconds, args.warmup, headers)
        single = run_mode("batch=1", models_dir, dict(common, MAX_BATCH_SIZE=1, MAX_WAIT_MS=0), clip, levels, args.seconds, args.warmup, headers)
        load_after = os.getloadavg()
        busiest = next((b for b in batched if b["clients"] == 16), batched[-1])
        seen_batch = args.max_batch_size if math.isnan(busiest["mean_batch"]) else busiest["mean_batch"]
        seen_batch = min(max(int(round(seen_batch)), 2), args.max_batch_size)
        worker_b1, worker_bn = worker_batch_gain(Path(models_dir), seen_batch, args.threads, args.device, args.clip_seconds)

    print()
    print(f"{'clients':>8} | {'batching req/s':>14} {'p50 ms':>8} {'p99 ms':>8} | {'batch=1 req/s':>13} {'p50 ms':>8} {'p99 ms':>8} | {'speed-up':>8}")
    for b, s in zip(batched, single):
        ratio = b["rps"] / s["rps"] if s["rps"] else float("nan")
        print(f"{b['clients']:>8} | {b['rps']:>14.2f} {b['p50'] * 1000:>8.1f} {b['p99'] * 1000:>8.1f} | {s['rps']:>13.2f} {s['p50'] * 1000:>8.1f} {s['p99'] * 1000:>8.1f} | {ratio:>7.2f}x")
    at16 = next(((b, s) for b, s in zip(batched, single) if b["clients"] == 16), None)
    if at16 is not None:
        b, s = at16
        print(f"\nat 16 clients: batching {b['rps']:.2f} req/s vs max_batch_size=1 {s['rps']:.2f} req/s -> {b['rps'] / s['rps']:.2f}x (target >= 2x); "
              f"batching p99/p50 = {b['p99'] / b['p50']:.2f} (target <= 2)")
    print(f"the worker's own computation (front end + model, no HTTP), per clip: {worker_b1 * 1000:.1f} ms at batch 1, "
          f"{worker_bn * 1000:.1f} ms at batch {seen_batch} (the mean batch at {busiest['clients']} clients) -> batching can win at most about {worker_b1 / worker_bn:.2f}x here")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (other processes on this machine share its cores)")
    print("reproduce: " + " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/bench_service.py", *(argv if argv is not None else sys.argv[1:])]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
