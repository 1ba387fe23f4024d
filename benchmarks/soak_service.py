"""Soak test of the tagging service: N clients for T seconds with good, long and bad files; memory must stay flat.

Starts the real service (``python -m service`` in a subprocess on 127.0.0.1,
the random-initialised ``convnext_atto_dcls_audio`` of bench_service.py unless
--models-dir is given) and drives it with closed-loop clients (each sends its
next request as soon as the last is answered). Every client draws its files
from a fixed mix, seeded per client:

* good: 7 s clips as WAV, FLAC and Ogg Vorbis, one in five sent through
  ``/v1/tag/batch`` with a second clip;
* long: a 3-minute FLAC (37 windows, sharing batches with the short ones);
* bad: random bytes (415), a WAV header with no samples (400), a WAV cut short
  (200 with a ``truncated`` warning), 11 minutes of audio (413).

It samples the server's resident memory (``/proc/<pid>/status``) every few
seconds and reports the throughput, p50/p99 latency per kind of file, the
answers by status, and the RSS at the start of the measured part (after the
warm-up: allocator pools, model buffers and the first large decodes are paid
for by then), in its middle and at its end, each the median of the samples in
that fifth of the run (the RSS follows how many long files are in flight; a
leak lifts the median). The baseline of the ratio is the first: the run fails
(exit 1) if the RSS at the end is more than 10 % above it, or if any answer is
a 5xx other than 503/504, or a connection breaks.

CPU (the full run, and the 60 s form that `make bench` runs)::

    .venv/bin/python benchmarks/soak_service.py
    .venv/bin/python benchmarks/soak_service.py --seconds 60

Single GPU::

    .venv/bin/python benchmarks/soak_service.py --device cuda --threads 4

What bounds it: throughput is the model's compute (2 CPU cores here), shared by
16 clients; the memory is bounded by the queue (QUEUE_SIZE requests of at most
MAX_UPLOAD_BYTES each) and what the allocator keeps.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_service import Server, build_release  # noqa: E402  (the same server start-up and model)


def _encode(y: np.ndarray, sr: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, y.astype(np.float32), sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def _sound(seconds: float, sr: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return 0.3 * np.sin(2 * np.pi * (220 + 40 * seed) * t) + 0.05 * rng.standard_normal(t.shape)


def file_mix() -> list:
    """(kind, name, bytes, weight) of every file the clients send."""
    good_wav = _encode(_sound(7, 32000, 1), 32000, "WAV", "PCM_16")
    header_only = good_wav[:44]
    quiet = 0.01 * np.sin(2 * np.pi * 250 * np.arange(660 * 8000) / 8000)
    return [
        ("good", "clip.wav", good_wav, 30),
        ("good", "clip.flac", _encode(_sound(7, 44100, 2), 44100, "FLAC"), 20),
        ("good", "clip.ogg", _encode(_sound(7, 48000, 3), 48000, "OGG", "VORBIS"), 20),
        ("long", "three_minutes.flac", _encode(_sound(180, 16000, 4), 16000, "FLAC"), 10),
        ("bad", "noise.bin", np.random.default_rng(5).bytes(40_000), 5),
        ("bad", "header_only.wav", header_only, 5),
        ("bad", "cut.wav", good_wav[: len(good_wav) // 2], 5),
        ("bad", "eleven_minutes.flac", _encode(quiet, 8000, "FLAC"), 5),
    ]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/<pid>/status")


class Soak:
    def __init__(self, url: str, pid: int, clients: int, seconds: float, warmup: float, every: float, headers: dict):
        self.url, self.pid, self.clients, self.seconds, self.warmup, self.every, self.headers = url, pid, clients, seconds, warmup, every, headers
        self.files = file_mix()
        self.lock = threading.Lock()
        self.answers = []  # (time since start, kind, status, latency s)
        self.rss = []  # (time since start, bytes)
        self.stop = threading.Event()
        self.t0 = 0.0

    def client(self, index: int) -> None:
        rng = np.random.default_rng(1000 + index)
        weights = np.array([f[3] for f in self.files], float)
        good = [f for f in self.files if f[0] == "good"]
        with httpx.Client(base_url=self.url, timeout=600, headers=self.headers) as c:
            while not self.stop.is_set():
                kind, name, data, _ = self.files[rng.choice(len(self.files), p=weights / weights.sum())]
                batch = kind == "good" and rng.random() < 0.2
                t = time.perf_counter()
                try:
                    if batch:
                        other = good[rng.integers(len(good))]
                        r = c.post("/v1/tag/batch", files=[("files", (name, data)), ("files", (other[1], other[2]))], data={"top_k": "5"})
                    else:
                        r = c.post("/v1/tag", files={"file": (name, data)}, data={"top_k": "5"})
                    status = r.status_code
                except httpx.HTTPError as e:
                    status = f"connection error ({type(e).__name__})"
                done = time.perf_counter()
                with self.lock:
                    self.answers.append((done - self.t0, "batch" if batch else kind, status, done - t))

    def sample_memory(self) -> None:
        while not self.stop.is_set():
            self.rss.append((time.perf_counter() - self.t0, rss_bytes(self.pid)))
            self.stop.wait(self.every)

    def run(self) -> None:
        threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(self.clients)]
        self.t0 = time.perf_counter()
        sampler = threading.Thread(target=self.sample_memory, daemon=True)
        sampler.start()
        for t in threads:
            t.start()
        self.stop.wait(self.warmup + self.seconds)
        self.stop.set()
        for t in threads:
            t.join(600)
        sampler.join(60)
        self.rss.append((time.perf_counter() - self.t0, rss_bytes(self.pid)))

    def rss_around(self, fraction: float) -> float:
        """Median RSS over the fifth of the measured part centred on ``fraction`` of it (0: its first fifth,
        1: its last): a leak raises it, a moment with several long files in flight does not."""
        lo = self.warmup + self.seconds * min(max(fraction - 0.1, 0.0), 0.8)
        samples = [r for t, r in self.rss if lo <= t <= lo + self.seconds / 5]
        return float(np.median(samples)) if samples else float(self.rss[-1][1])


def report(soak: Soak, max_growth: float) -> int:
    measured = [a for a in soak.answers if a[0] >= soak.warmup]
    statuses = Counter(a[2] for a in measured)
    print(f"\nanswers in the measured {soak.seconds:g} s (after {soak.warmup:g} s of warm-up): {len(measured)}, {len(measured) / soak.seconds:.2f} req/s")
    for status, n in sorted(statuses.items(), key=lambda x: str(x[0])):
        print(f"  {status!s:>28}: {n}")
    by_kind = defaultdict(list)
    for _, kind, status, latency in measured:
        if status == 200:
            by_kind[kind].append(latency)
    for kind, lat in sorted(by_kind.items()):
        print(f"  200s for {kind:>5} files: {len(lat):5d}, p50 {np.percentile(lat, 50) * 1000:8.0f} ms, p99 {np.percentile(lat, 99) * 1000:8.0f} ms")
    start, mid, end = soak.rss_around(0.0), soak.rss_around(0.5), soak.rss_around(1.0)
    peak = max(r for t, r in soak.rss if t >= soak.warmup)
    mib = 1024 * 1024
    growth = end / start - 1
    print(f"server RSS (median of the samples in the first, middle and last fifth of the measured part, every {soak.every:g} s): "
          f"start {start / mib:.1f} MiB, middle {mid / mib:.1f} MiB, end {end / mib:.1f} MiB, peak {peak / mib:.1f} MiB; "
          f"end / start = {end / start:.3f} (limit {1 + max_growth:.2f})")
    timeline = [f"{t:.0f} s {r / mib:.0f}" for t, r in soak.rss[:: max(1, len(soak.rss) // 12)]]
    print(f"RSS over time (MiB): {', '.join(timeline)}")
    failures = []
    if growth > max_growth:
        failures.append(f"RSS grew {growth * 100:.1f} % after warm-up (limit {max_growth * 100:.0f} %)")
    bad = {s: n for s, n in Counter(a[2] for a in soak.answers).items() if not isinstance(s, int) or (s >= 500 and s not in (503, 504))}
    if bad:
        failures.append(f"answers other than 2xx/4xx/503/504: {bad}")
    if not by_kind.get("good"):
        failures.append("no good file was tagged")
    for f in failures:
        print(f"FAIL: {f}")
    if not failures:
        print("PASS: memory flat, no 5xx but 503/504, no broken connection")
    return 1 if failures else 0


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-dir", type=Path, help="release folders to serve (default: a random-initialised --arch in a temp folder)")
    p.add_argument("--arch", default="convnext_atto_dcls_audio")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=600.0, help="measured time, after the warm-up")
    p.add_argument("--warmup", type=float, help="unmeasured load first (default: a tenth of --seconds, at least 10 s)")
    p.add_argument("--sample-every", type=float, default=2.0, help="seconds between RSS samples")
    p.add_argument("--max-growth", type=float, default=0.10, help="largest RSS growth after warm-up (fraction)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="TORCH_THREADS of the server")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else max(10.0, args.seconds / 10)
    headers = {"Authorization": f"Bearer {os.environ['API_KEY']}"} if os.environ.get("API_KEY") else {}
    with tempfile.TemporaryDirectory(prefix="soak-service-") as tmp:
        models_dir = args.models_dir or build_release(Path(tmp), args.arch)
        server = Server(models_dir, {"TORCH_THREADS": args.threads, "DEVICE": args.device, "QUEUE_SIZE": max(64, 4 * args.clients)})
        try:
            server.wait_ready()
            load = os.getloadavg()
            print(f"# {args.arch if not args.models_dir else args.models_dir} on {args.device}, TORCH_THREADS={args.threads}, {os.cpu_count()} cores ({cpu_model()}), "
                  f"{args.clients} clients, {warmup:g} s warm-up + {args.seconds:g} s, load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
            soak = Soak(server.url, server.proc.pid, args.clients, args.seconds, warmup, args.sample_every, headers)
            soak.run()
            load = os.getloadavg()
        finally:
            server.stop()
    code = report(soak, args.max_growth)
    print(f"load average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (other processes on this machine share its cores)")
    print("reproduce: " + " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/soak_service.py", *(argv if argv is not None else sys.argv[1:])]))
    return code


if __name__ == "__main__":
    sys.exit(main())
