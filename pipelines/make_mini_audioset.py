"""Build mini-AudioSet: a small, deterministic, synthetic AudioSet-format dataset.

Sixteen AudioSet classes whose sound can honestly be synthesised (tones, noises,
alarms, clicks, bells, drums), each with its own spectral and temporal signature.
Every 10 s clip mixes 1-3 of them with random levels, onsets and durations over a
quiet noise floor; its labels are the classes present. Train and eval splits are
balanced (each class leads the same number of clips) and drawn from disjoint
random streams. The output has the official layout -- segment CSVs with real MIDs
from the shipped ``class_labels_indices.csv`` and ``Y{YTID}.flac`` files -- so it goes
through exactly the same ingest as real AudioSet::

    python -m pipelines.make_mini_audioset data/mini_audioset            # CPU, < 1 min
    python -m pipelines.precompute build data/stores/mini_train \\
        --audioset-csv data/mini_audioset/balanced_train_segments.csv \\
        --audio-dir data/mini_audioset/audio/balanced_train_segments
    python -m pipelines.precompute build data/stores/mini_eval \\
        --audioset-csv data/mini_audioset/eval_segments.csv \\
        --audio-dir data/mini_audioset/audio/eval_segments

(No GPU is involved; there is no torchrun variant.) The same ``--seed`` and sizes
give byte-identical CSVs and identical audio samples, whatever ``--workers``.
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from audio_dcls.io import atomic_open, atomic_write, atomic_write_json
from audio_dcls.labels import AUDIOSET_LABELS_CSV, audioset_vocabulary
from pipelines.sources import Segment, write_segments_csv

log = logging.getLogger("pipelines.make_mini_audioset")

SAMPLE_RATE = 32000
AUDIO_DIR = "audio"
STAMP = "mini_audioset.json"
GENERATOR_VERSION = 1  # bump when the synthesis changes, so stale folders are rebuilt
_YTID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


# ----------------------------------------------------------------------------------
# sound synthesis: each returns a float32 signal of n samples (any level; the mixer
# sets levels). rng: numpy Generator, sr: sample rate. Oscillators run on a 32-bit
# integer phase accumulator (exact phase at any length, float32 speed).
# ----------------------------------------------------------------------------------
_PHASE_BITS = 32
_TABLE_BITS = 16
_SINE_TABLE = np.sin(2 * np.pi * np.arange(1 << _TABLE_BITS) / (1 << _TABLE_BITS)).astype(np.float32)


def _phase(freq, n: int, sr: int, phase0: float = 0.0) -> np.ndarray:
    """int64 phase accumulator in [0, 2**32) for a constant or per-sample frequency (Hz)."""
    p0 = int(phase0 / (2 * np.pi) * (1 << _PHASE_BITS))
    if np.ndim(freq) == 0:
        acc = np.arange(n, dtype=np.int64) * int(round(freq / sr * (1 << _PHASE_BITS))) + p0
    else:
        acc = np.cumsum(np.round(np.asarray(freq) / sr * (1 << _PHASE_BITS)).astype(np.int64)) + p0
    return acc & ((1 << _PHASE_BITS) - 1)


def _sine(freq, n: int, sr: int, phase0: float = 0.0) -> np.ndarray:
    return _SINE_TABLE[_phase(freq, n, sr, phase0) >> (_PHASE_BITS - _TABLE_BITS)]


def _wavetable(freq, n: int, sr: int, harmonic_amps, phase0: float = 0.0) -> np.ndarray:
    """Band-limited periodic oscillator with a fixed harmonic recipe."""
    amps = np.asarray(harmonic_amps, dtype=np.float64)
    size = 1 << _TABLE_BITS
    spec = np.zeros(size // 2 + 1, dtype=np.complex128)
    spec[1 : len(amps) + 1] = -1j * amps * size / 2  # sine phase
    table = np.fft.irfft(spec, size).astype(np.float32)
    return table[_phase(freq, n, sr, phase0) >> (_PHASE_BITS - _TABLE_BITS)]


def _smooth(x: np.ndarray, r: int) -> np.ndarray:
    """Moving average over r samples (O(n)): soft edges for gates."""
    if r <= 1:
        return x
    c = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
    y = (c[r:] - c[:-r]) / r
    return np.concatenate([np.full(r // 2, y[0]), y, np.full(len(x) - len(y) - r // 2, y[-1])]).astype(np.float32)


def _gate(n: int, sr: int, on_s: float, off_s: float, offset_s: float = 0.0, ramp_s: float = 0.005) -> np.ndarray:
    """0/1 on-off cadence with short ramps (avoids clicks)."""
    on, period = max(1, int(on_s * sr)), max(2, int((on_s + off_s) * sr))
    one = np.zeros(period, dtype=np.float32)
    one[:on] = 1.0
    skip = int(offset_s * sr) % period
    g = np.tile(one, (n + skip) // period + 1)[skip : skip + n]
    return _smooth(g, max(1, int(ramp_s * sr)))


def _events(n: int, sr: int, times: np.ndarray, make: Callable[[int], np.ndarray]) -> np.ndarray:
    """Place copies of a short sound (make(i) -> samples) at the given times (s)."""
    out = np.zeros(n, dtype=np.float32)
    for i, t0 in enumerate(times):
        s = int(t0 * sr)
        if s >= n:
            break
        ev = make(i)
        e = min(n, s + len(ev))
        out[s:e] += ev[: e - s]
    return out


def _noise(rng, n: int) -> np.ndarray:
    return rng.standard_normal(n, dtype=np.float32)


def _bandpass(x: np.ndarray, lo: float, hi: float, sr: int) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    return sosfilt(butter(4, [lo, hi], "bandpass", fs=sr, output="sos"), x).astype(np.float32)


def synth_hum(rng, n, sr):  # mains hum: 50/60 Hz with a few decaying harmonics, steady
    f0 = float(rng.choice([50.0, 60.0]))
    amps = np.array([1.0, 0.6, 0.45, 0.3, 0.2, 0.12, 0.08]) * rng.uniform(0.7, 1.0, 7)
    return _wavetable(f0, n, sr, amps, rng.uniform(0, 2 * np.pi))


def synth_dial_tone(rng, n, sr):  # North American dial tone: 350 + 440 Hz, continuous
    return _sine(350.0, n, sr, rng.uniform(0, 6.3)) + _sine(440.0, n, sr, rng.uniform(0, 6.3))


def synth_busy_signal(rng, n, sr):  # 480 + 620 Hz, 0.5 s on / 0.5 s off
    tone = _sine(480.0, n, sr, rng.uniform(0, 6.3)) + _sine(620.0, n, sr, rng.uniform(0, 6.3))
    return tone * _gate(n, sr, 0.5, 0.5, rng.uniform(0, 1.0))


def synth_sine_wave(rng, n, sr):  # one steady pure tone, 3.5-7 kHz (above the whistles)
    return _sine(float(np.exp(rng.uniform(np.log(3500), np.log(7000)))), n, sr, rng.uniform(0, 6.3))


def synth_beep(rng, n, sr):  # short square-ish bleeps around 1 kHz in a regular rhythm
    f0 = rng.uniform(900, 1300)
    on, period = rng.uniform(0.07, 0.18), rng.uniform(0.35, 0.9)
    tone = _wavetable(f0, n, sr, [1.0, 0.0, 0.3, 0.0, 0.15])
    return tone * _gate(n, sr, on, period - on, rng.uniform(0, period), ramp_s=0.003)


def synth_siren(rng, n, sr):  # slow wail: pitch swept 0.6-1.5 kHz, harmonic-rich
    fc, dev, period = rng.uniform(850, 1050), rng.uniform(300, 450), rng.uniform(1.5, 4.0)
    f = fc + dev * _sine(1.0 / period, n, sr, rng.uniform(0, 6.3))
    return _wavetable(f, n, sr, [1.0, 0.5, 0.33, 0.25])


def synth_chirp_tone(rng, n, sr):  # repeated fast exponential up-sweeps 0.5 -> 8 kHz
    dur, gap = rng.uniform(0.15, 0.4), rng.uniform(0.05, 0.3)
    m = int(dur * sr)
    tt = np.arange(m) / sr
    k = np.log(8000 / 500) / dur
    sweep = (np.sin(2 * np.pi * 500 * (np.exp(k * tt) - 1) / k) * np.hanning(m) ** 0.25).astype(np.float32)
    return _events(n, sr, np.arange(rng.uniform(0, 0.3), n / sr, dur + gap), lambda i: sweep)


def synth_whistle(rng, n, sr):  # breathy pure tone 1.5-2.8 kHz with vibrato and glides, in phrases
    f0 = rng.uniform(1500, 2800)
    vibrato = 1 + rng.uniform(0.02, 0.04) * _sine(rng.uniform(5, 7), n, sr)
    glide = 1 + 0.08 * _sine(1.0 / rng.uniform(1.5, 3.0), n, sr)
    f = f0 * vibrato * glide
    tone = _sine(f, n, sr) + 0.05 * _bandpass(_noise(rng, n), f0 * 0.8, f0 * 1.25, sr)
    return tone * _gate(n, sr, rng.uniform(0.6, 1.8), rng.uniform(0.2, 0.5), rng.uniform(0, 1), ramp_s=0.03)


def synth_white_noise(rng, n, sr):
    return _noise(rng, n)


def synth_pink_noise(rng, n, sr):  # 1/f power spectrum (P. Kellet's 3-pole approximation, +-0.05 dB)
    from scipy.signal import lfilter

    b = [0.049922035, -0.095993537, 0.050612699, -0.004408786]
    a = [1.0, -2.494956002, 2.017265875, -0.522189400]
    return lfilter(b, a, _noise(rng, n)).astype(np.float32)


def synth_static(rng, n, sr):  # radio static: 1-8 kHz noise chopped into irregular 5-40 ms bursts + crackles
    band = _bandpass(_noise(rng, n), 1000, 8000, sr)
    seg = rng.uniform(0.005, 0.04, size=int(n / sr / 0.005) + 1)
    edges = np.minimum((np.cumsum(seg) * sr).astype(np.int64), n)
    levels = np.where(rng.random(len(edges)) < 0.55, rng.uniform(0.4, 1.0, len(edges)), 0.0).astype(np.float32)
    gate = np.repeat(levels, np.diff(np.concatenate([[0], edges])))
    gate = np.concatenate([gate, np.zeros(n - len(gate), np.float32)])
    crackle = np.zeros(n, dtype=np.float32)
    idx = rng.integers(0, n, size=int(rng.uniform(30, 80) * n / sr))
    crackle[idx] = rng.choice([-4.0, 4.0], size=len(idx))
    return band * gate + crackle


def synth_clicking(rng, n, sr):  # irregular broadband clicks (Poisson, 4-12 per second)
    rate = rng.uniform(4, 12)
    times = np.cumsum(rng.exponential(1 / rate, size=int(rate * n / sr * 2) + 2))
    m = int(0.002 * sr)
    env = np.exp(-np.arange(m) / (0.0004 * sr)).astype(np.float32)
    return _events(n, sr, times, lambda i: _noise(rng, m) * env * np.float32(rng.uniform(0.6, 1.0)))


def synth_tick(rng, n, sr):  # clock ticks: exact period, each a damped 3-5 kHz ping
    period = float(rng.choice([0.5, 1.0]))
    f = rng.uniform(3000, 5000)
    m = int(0.03 * sr)
    tt = np.arange(m) / sr
    ping = (np.sin(2 * np.pi * f * tt) * np.exp(-tt / 0.004)).astype(np.float32)
    tock = (np.sin(2 * np.pi * f * 0.8 * tt) * np.exp(-tt / 0.004)).astype(np.float32)
    return _events(n, sr, np.arange(rng.uniform(0, period), n / sr, period), lambda i: ping if i % 2 == 0 else tock)


def synth_bell(rng, n, sr):  # struck bell: inharmonic partials with long decays, every 1.5-3 s
    f0 = rng.uniform(300, 700)
    ratios = np.array([0.5, 1.0, 1.19, 1.5, 2.0, 2.51, 3.01, 4.1])
    amps = np.array([0.5, 1.0, 0.6, 0.4, 0.7, 0.3, 0.25, 0.15])
    m = int(min(3.0, n / sr) * sr)
    tt = np.arange(m, dtype=np.float32) / np.float32(sr)
    decay = 1.6 / np.sqrt(ratios)
    strike = sum(np.float32(a) * _sine(f0 * r, m, sr) * np.exp(-tt / np.float32(d)) for a, r, d in zip(amps, ratios, decay))
    period = rng.uniform(1.5, 3.0)
    return _events(n, sr, np.arange(rng.uniform(0, 0.5), n / sr, period), lambda i: strike)


def synth_drum(rng, n, sr):  # membrane hits: pitch falling to 50-70 Hz, 90-150 BPM
    m = int(0.4 * sr)
    tt = np.arange(m) / sr
    f_end = rng.uniform(50, 70)
    f = f_end + (rng.uniform(120, 180) - f_end) * np.exp(-tt / 0.03)
    body = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-tt / rng.uniform(0.12, 0.25))
    skin = rng.standard_normal(m) * np.exp(-tt / 0.01) * 0.3
    hit = (body + skin).astype(np.float32)
    beat = 60.0 / rng.uniform(90, 150)
    return _events(n, sr, np.arange(rng.uniform(0, beat), n / sr, beat), lambda i: hit * np.float32(1.0 if i % 4 == 0 else 0.7))


def synth_buzz(rng, n, sr):  # harsh buzzer: square wave 110-220 Hz in bursts
    f0 = rng.uniform(110, 220)
    k = np.arange(1, int(7000 / f0) + 1)
    tone = _wavetable(f0, n, sr, np.where(k % 2 == 1, 1.0 / k, 0.0))
    return tone * _gate(n, sr, rng.uniform(0.3, 1.5), rng.uniform(0.2, 0.8), rng.uniform(0, 1), ramp_s=0.01)


@dataclass(frozen=True)
class SynthClass:
    display_name: str  # exactly as in class_labels_indices.csv
    synth: Callable  # (rng, n, sr) -> samples
    level_db: tuple[float, float]  # RMS level range over the active part, dBFS


CLASSES: tuple[SynthClass, ...] = (
    SynthClass("Hum", synth_hum, (-26, -14)),
    SynthClass("Dial tone", synth_dial_tone, (-26, -14)),
    SynthClass("Busy signal", synth_busy_signal, (-26, -14)),
    SynthClass("Sine wave", synth_sine_wave, (-28, -16)),
    SynthClass("Beep, bleep", synth_beep, (-26, -14)),
    SynthClass("Siren", synth_siren, (-26, -14)),
    SynthClass("Chirp tone", synth_chirp_tone, (-26, -14)),
    SynthClass("Whistle", synth_whistle, (-28, -16)),
    SynthClass("White noise", synth_white_noise, (-34, -24)),
    SynthClass("Pink noise", synth_pink_noise, (-28, -18)),
    SynthClass("Static", synth_static, (-32, -20)),
    SynthClass("Clicking", synth_clicking, (-30, -18)),
    SynthClass("Tick", synth_tick, (-28, -16)),
    SynthClass("Bell", synth_bell, (-26, -14)),
    SynthClass("Drum", synth_drum, (-24, -12)),
    SynthClass("Buzz", synth_buzz, (-28, -16)),
)


# ----------------------------------------------------------------------------------
# clips
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipSpec:
    ytid: str
    start: float  # segment start in the (imaginary) video, seconds
    classes: tuple[int, ...]  # indices into CLASSES; the first one leads the clip
    seed: tuple[int, ...]  # seeds the clip's own random stream
    seconds: float


def _level(x: np.ndarray, level_db: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0
    return x * np.float32(10 ** (level_db / 20) / rms) if rms > 0 else x


def render_clip(spec: ClipSpec, sr: int = SAMPLE_RATE) -> np.ndarray:
    """The clip's float32 samples (deterministic in spec.seed)."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(list(spec.seed))
    n = int(round(spec.seconds * sr))
    mix = np.zeros(n, dtype=np.float32)
    for j, c in enumerate(spec.classes):
        cls = CLASSES[c]
        # the leading source lasts longer, so every clip clearly shows its first label
        dur = rng.uniform(0.5, 1.0) if j == 0 else rng.uniform(0.3, 0.8)
        m = max(int(dur * n), sr // 10)
        s = int(rng.uniform(0, 1) * (n - m))
        src = cls.synth(rng, m, sr)
        fade = min(int(0.02 * sr), m // 2)
        ramp = np.linspace(0, 1, fade, dtype=np.float32)
        src[:fade] *= ramp
        src[m - fade :] *= ramp[::-1]
        mix[s : s + m] += _level(src, rng.uniform(*cls.level_db))
    # brown-ish noise floor (room tone): leaky-integrated white noise, far below the sources
    floor = lfilter([1.0], [1.0, -0.995], _noise(rng, n)).astype(np.float32)
    mix += _level(floor, rng.uniform(-60, -50))
    peak = float(np.abs(mix).max())
    if peak > 0.98:
        mix *= np.float32(0.98 / peak)
    return mix


def _random_ytid(rng, taken: set) -> str:
    while True:
        y = "".join(rng.choice(_YTID_ALPHABET, 11))
        if y not in taken:
            taken.add(y)
            return y


def plan_split(split: str, count: int, seed: int, taken: set, seconds: float = 10.0) -> list[ClipSpec]:
    """Balanced clip specs: class i leads clips i, i+K, i+2K, ...; 1-3 sources each."""
    split_code = {"train": 1, "eval": 2}[split]
    rng = np.random.default_rng([seed, split_code])
    K = len(CLASSES)
    specs = []
    for i in range(count):
        lead = i % K
        n_sources = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
        others = rng.permutation([k for k in range(K) if k != lead])[: n_sources - 1]
        start = 10.0 * int(rng.integers(0, 30))
        specs.append(ClipSpec(_random_ytid(rng, taken), start, (lead, *map(int, others)), (seed, split_code, i), seconds))
    return specs


def _render_and_write(job: tuple[ClipSpec, str]) -> str:
    import soundfile as sf

    spec, path = job
    x = render_clip(spec)
    with atomic_open(path, "wb") as f:
        sf.write(f, x, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return path


def build_mini_audioset(out: str | os.PathLike, seed: int = 0, n_train: int = 384, n_eval: int = 192, workers: int | None = None, clip_seconds: float = 10.0) -> dict:
    """Write the dataset to ``out``; returns its description (also saved as mini_audioset.json).

    A folder already holding the same build (same seed, sizes, generator version) is
    left as it is."""
    if n_train < 1 or n_eval < 1:
        raise ValueError("--n-train and --n-eval must be at least 1")
    if not 1.0 <= clip_seconds <= 60.0:
        raise ValueError("--clip-seconds must be between 1 and 60")
    out = Path(out)
    vocab = audioset_vocabulary()
    description = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "n_train": n_train,
        "n_eval": n_eval,
        "clip_seconds": clip_seconds,
        "sample_rate": SAMPLE_RATE,
        "classes": [{"display_name": c.display_name, "mid": vocab.mid(vocab.index(c.display_name)), "index": vocab.index(c.display_name)} for c in CLASSES],
    }
    stamp = out / STAMP
    if stamp.exists():
        try:
            if json.loads(stamp.read_text()) == description:
                log.info("%s already holds this mini-AudioSet (seed %d); nothing to do", out, seed)
                return description
        except ValueError:
            pass
        stamp.unlink()
    taken: set = set()
    splits = {
        "balanced_train_segments": plan_split("train", n_train, seed, taken, clip_seconds),
        "eval_segments": plan_split("eval", n_eval, seed, taken, clip_seconds),
    }
    jobs = []
    for name, specs in splits.items():
        folder = out / AUDIO_DIR / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        segs = [Segment(s.ytid, s.start, s.start + 10.0, tuple(vocab.mid(vocab.index(CLASSES[c].display_name)) for c in s.classes)) for s in specs]
        write_segments_csv(out / f"{name}.csv", segs)
        jobs += [(s, str(folder / f"Y{s.ytid}.flac")) for s in specs]
    atomic_write(out / "class_labels_indices.csv", AUDIOSET_LABELS_CSV.read_bytes())
    workers = workers or min(len(jobs), max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
    if workers == 1:
        for j in jobs:
            _render_and_write(j)
    else:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers) as pool:
            for _ in pool.imap_unordered(_render_and_write, jobs, chunksize=4):
                pass
    atomic_write(out / "README.md", _readme(description))
    atomic_write_json(stamp, description)  # last: the folder is complete
    return description


def _readme(d: dict) -> str:
    rows = "\n".join(f"| {c['index']} | `{c['mid']}` | {c['display_name']} |" for c in d["classes"])
    return (
        "# mini-AudioSet (synthetic)\n\n"
        f"Generated by `python -m pipelines.make_mini_audioset OUT --seed {d['seed']} --n-train {d['n_train']} --n-eval {d['n_eval']}` "
        f"(generator version {d['generator_version']}). {d['n_train']} training and {d['n_eval']} evaluation clips of "
        f"{d['clip_seconds']:g} s, mono FLAC at {d['sample_rate']} Hz, in the official AudioSet layout. Labels index the full "
        "527-class AudioSet vocabulary; only these classes occur:\n\n| index | MID | display name |\n|---|---|---|\n" + rows + "\n"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.make_mini_audioset", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=384, help="training clips (default %(default)s: 24 led by each class)")
    p.add_argument("--n-eval", type=int, default=192, help="evaluation clips (default %(default)s: 12 led by each class)")
    p.add_argument("--clip-seconds", type=float, default=10.0, help="clip length (default %(default)s, as AudioSet)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = p.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    try:
        d = build_mini_audioset(args.out, args.seed, args.n_train, args.n_eval, args.workers, args.clip_seconds)
    except (ValueError, OSError) as e:
        print(f"make_mini_audioset: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(
        f"mini-AudioSet at {args.out}: {d['n_train']} train + {d['n_eval']} eval clips, {len(d['classes'])} classes, "
        f"seed {d['seed']}, {time.perf_counter() - t0:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
