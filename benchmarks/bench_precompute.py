"""Precompute throughput: our feature-store build vs a librosa baseline, one core each.

Both sides turn the same 10 s, 44.1 kHz stereo FLAC files (generated here, cached in
.bench/) into 128-band log-mels at 32 kHz:

* baseline: ``librosa.load(path, sr=32000)`` (soundfile + soxr_hq) +
  ``librosa.feature.melspectrogram`` with the paper's settings + ``librosa.power_to_db``
  and the normalisation, i.e. the same log-mels (the baseline does not write them
  anywhere, so it is, if anything, favoured);
* ours: ``pipelines.precompute.build_feature_store`` with one worker on an
  AudioSet-layout CSV -- the whole ingest: file matching, decoding, resampling, the
  torch front end, fp16 shards, checksums, manifest.

Thread pools are pinned to one thread on both sides and each side runs in this one
process, so its CPU time (user + system, ``time.process_time``) is the core-seconds
it used: clips/s per core = clips / CPU seconds, best of --repeats rounds (as timeit
does: the fastest round is the one least disturbed by other jobs). The two sides
alternate round by round; each round's own ratio is printed too, and wall-clock rates
(on an idle machine CPU and wall agree).
A last table splits one clip's CPU time into its steps (best of --repeats passes
over 16 files, the steps interleaved): the baseline's load and front end, and our
decoding, resampling and front end, with the ceiling that our decoding and
resampling alone put on the ratio.
Targets (issue 4): ours >= 1.5x the baseline and >= 30 clips/s per core.

    python benchmarks/bench_precompute.py [--clips 96] [--repeats 5] [--workers 2]
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy/torch load: one core per side

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SOURCE_SR = 44100
TARGET_CLIPS_PER_S_PER_CORE = 30.0
TARGET_RATIO = 1.5


def make_flac_set(folder: Path, count: int) -> Path:
    """count 10 s stereo 44.1 kHz FLAC files (mini-AudioSet mixtures, one per channel) + a segment CSV."""
    import soundfile as sf

    from audio_dcls.labels import audioset_vocabulary
    from pipelines.make_mini_audioset import CLASSES, ClipSpec, render_clip
    from pipelines.sources import Segment, write_segments_csv

    csv_path = folder / "bench_segments.csv"
    if csv_path.exists() and len(list((folder / "audio").glob("*.flac"))) == count:
        return csv_path
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "audio").mkdir(parents=True)
    vocab = audioset_vocabulary()
    segments = []
    for i in range(count):
        ytid = f"bench{i:06d}"
        classes = (i % len(CLASSES), (i * 7 + 3) % len(CLASSES))
        left = render_clip(ClipSpec(ytid, 0.0, classes, (1234, i, 0), 10.0), sr=SOURCE_SR)
        right = render_clip(ClipSpec(ytid, 0.0, classes, (1234, i, 1), 10.0), sr=SOURCE_SR)
        sf.write(folder / "audio" / f"Y{ytid}.flac", np.stack([left, right], 1), SOURCE_SR, subtype="PCM_16")
        segments.append(Segment(ytid, 0.0, 10.0, tuple(vocab.mid(vocab.index(CLASSES[c].display_name)) for c in classes)))
    write_segments_csv(csv_path, segments)
    return csv_path


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(t0: tuple[float, float]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) since t0."""
    return time.perf_counter() - t0[0], time.process_time() - t0[1]


def run_baseline(files: list[Path]) -> tuple[float, float]:
    import librosa

    from audio_dcls.features import LogMelConfig

    c = LogMelConfig()
    t0 = _clock()
    for f in files:
        y, _ = librosa.load(f, sr=c.sample_rate)
        mel = librosa.feature.melspectrogram(
            y=y, sr=c.sample_rate, n_fft=c.n_fft, hop_length=c.hop_length, win_length=c.win_length,
            n_mels=c.n_mels, fmin=c.f_min, fmax=c.f_max, htk=True, norm=None, power=2.0,
        )
        (librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None) - c.mean) / c.std
    return _since(t0)


def run_ours(csv_path: Path, audio_dir: Path, workers: int) -> tuple[float, float]:
    from pipelines.precompute import build_feature_store
    from pipelines.sources import AudioSetSource

    with tempfile.TemporaryDirectory(prefix="bench_store_") as out:
        t0 = _clock()
        source = AudioSetSource(csv_path, audio_dir=audio_dir)
        report = build_feature_store(source, out, workers=workers, progress=False)
        elapsed = _since(t0)
    assert report.written == len(source) and not report.skipped, report.summary()
    return elapsed


def stage_times(files: list[Path], repeats: int) -> dict[str, float]:
    """Best CPU seconds per clip of each step, both sides' front ends on the same audio."""
    import librosa
    import torch

    from audio_dcls.audio import load_audio_with_rate, resample
    from audio_dcls.features import LogMel, LogMelConfig

    c = LogMelConfig()
    front_end = LogMel(c).eval()
    decoded = [load_audio_with_rate(f) for f in files]
    audio = [resample(y, rate, c.sample_rate) for y, rate in decoded]

    def librosa_mel(y):
        mel = librosa.feature.melspectrogram(
            y=y, sr=c.sample_rate, n_fft=c.n_fft, hop_length=c.hop_length, win_length=c.win_length,
            n_mels=c.n_mels, fmin=c.f_min, fmax=c.f_max, htk=True, norm=None, power=2.0,
        )
        return (librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None) - c.mean) / c.std

    def ours_mel(y):
        with torch.inference_mode():
            return front_end(torch.from_numpy(y))

    steps = {
        "baseline: librosa.load(sr=32000)": lambda: [librosa.load(f, sr=c.sample_rate) for f in files],
        "baseline: melspectrogram + dB": lambda: [librosa_mel(y) for y in audio],
        "ours: decode + channel mix (libsndfile)": lambda: [load_audio_with_rate(f) for f in files],
        "ours: resample 44.1 -> 32 kHz (soxr HQ)": lambda: [resample(y, rate, c.sample_rate) for y, rate in decoded],
        "ours: front end (LogMel)": lambda: [ours_mel(y) for y in audio],
    }
    best = {k: float("inf") for k in steps}
    for _ in range(repeats):  # interleaved, like the whole-ingest rounds
        for k, fn in steps.items():
            t0 = time.process_time()
            fn()
            best[k] = min(best[k], (time.process_time() - t0) / len(files))
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=96, help="FLAC files to process (default %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per side; the fastest counts (default %(default)s)")
    p.add_argument("--workers", type=int, default=0, help="also time the build with this many worker processes (0: skip)")
    p.add_argument("--data", type=Path, default=REPO / ".bench" / "precompute_flac", help="cache folder for the generated files")
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    csv_path = make_flac_set(args.data / str(args.clips), args.clips)
    audio_dir = csv_path.parent / "audio"
    files = sorted(audio_dir.glob("*.flac"))
    print(f"{len(files)} x 10 s 44.1 kHz stereo FLAC in {audio_dir} (ready in {time.perf_counter() - t0:.1f} s)")

    run_baseline(files[:4])  # warm-up: imports, librosa's filterbank cache, page cache
    run_ours(csv_path, audio_dir, 1)
    base, ours = [], []
    for _ in range(args.repeats):  # interleaved, so background load hits both sides alike
        base.append(run_baseline(files))
        ours.append(run_ours(csv_path, audio_dir, 1))
    n = len(files)
    base_wall, base_cpu = (min(t[k] for t in base) for k in (0, 1))
    ours_wall, ours_cpu = (min(t[k] for t in ours) for k in (0, 1))
    base_rate, ours_rate = n / base_cpu, n / ours_cpu
    # each round times the two sides back to back, so their ratio sees the same background load;
    # the median over rounds is the figure that holds on a busy machine
    ratio = base_cpu / ours_cpu
    wall_ratio = base_wall / ours_wall
    print(f"{'':52s} clips/s per core (CPU time)   clips/s (wall)   best of {args.repeats}")
    print(f"{'baseline librosa.load(sr=32000) + melspectrogram + dB':52s} {base_rate:10.1f} {n / base_wall:22.1f}")
    print(f"{'ours     precompute build, 1 worker (whole ingest)':52s} {ours_rate:10.1f} {n / ours_wall:22.1f}")
    print(f"each round's ratio (CPU): {', '.join(f'{b[1] / o[1]:.2f}' for b, o in zip(base, ours))}  (median {np.median([b[1] / o[1] for b, o in zip(base, ours)]):.2f})")
    print(f"ratio ours/baseline (best rounds): {ratio:.2f}x per core, {wall_ratio:.2f}x wall  (target >= {TARGET_RATIO}x: {'PASS' if ratio >= TARGET_RATIO else 'FAIL'})")
    print(f"ours per core: {ours_rate:.1f} clips/s  (target >= {TARGET_CLIPS_PER_S_PER_CORE:g}: {'PASS' if ours_rate >= TARGET_CLIPS_PER_S_PER_CORE else 'FAIL'})")
    steps = stage_times(files[:16], args.repeats)
    print("one clip's CPU time by step, ms (best of %d passes over 16 files):" % args.repeats)
    for k, v in steps.items():
        print(f"  {k:42s} {v * 1e3:6.1f}")
    audio_in = steps["ours: decode + channel mix (libsndfile)"] + steps["ours: resample 44.1 -> 32 kHz (soxr HQ)"]
    baseline = steps["baseline: librosa.load(sr=32000)"] + steps["baseline: melspectrogram + dB"]
    print(f"  a free front end and store would make ours {baseline / audio_in:.2f}x the baseline at most "
          f"(these steps give {baseline / (audio_in + steps['ours: front end (LogMel)']):.2f}x before the store's own work)")
    if args.workers > 1:
        t = min(run_ours(csv_path, audio_dir, args.workers)[0] for _ in range(args.repeats))
        print(f"ours with {args.workers} workers: {n / t:.1f} clips/s wall ({n / t / (n / ours_wall):.2f}x one worker's wall rate; {os.cpu_count()} cores here)")
    print(f"reproduce: .venv/bin/python benchmarks/bench_precompute.py --clips {args.clips} --repeats {args.repeats}" + (f" --workers {args.workers}" if args.workers else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
