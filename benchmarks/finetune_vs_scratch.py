"""Fine-tuning vs training from scratch on sounds the parent never heard.

Synthesises a small dataset of six NEW classes -- none of mini-AudioSet's sixteen, and not
AudioSet names, so their MIDs stay empty -- as 10 s WAV files with ``path,labels`` CSVs
(each clip: one leading class, sometimes a second, over a noise floor), then runs
``pipelines.finetune`` twice with the same recipe (configs/finetune_cpu.yaml), seed,
steps and eval set:

* fine-tuned: ``--init-from`` the embedded default's release (``make train-audioset``
  writes runs/release/convnext_atto_dcls_audio-mini-seed0);
* baseline: ``--init-from none``, the same architecture from a random initialisation.

It prints both eval mAPs, their ratio, and the commands. Bounded by the CPU: each run is
a few hundred optimizer steps of the 320 k-parameter CPU model on 10 s clips.

    python benchmarks/finetune_vs_scratch.py [--parent runs/release/convnext_atto_dcls_audio-mini-seed0] [--per-class 40] [ARGS ...]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SR = 32000
SECONDS = 10.0


def _classes():
    from pipelines.make_mini_audioset import _bandpass, _events, _gate, _noise, _sine, _smooth, _wavetable

    def tremolo_organ(rng, n, sr):  # harmonic organ tone 220-440 Hz, amplitude-modulated at 5-8 Hz
        tone = _wavetable(rng.uniform(220, 440), n, sr, [1.0, 0.7, 0.5, 0.35, 0.2, 0.1])
        return tone * (0.6 + 0.4 * _sine(rng.uniform(5, 8), n, sr))

    def gusty_wind(rng, n, sr):  # band-limited noise 150-1200 Hz under a slow random envelope
        env = _smooth(np.repeat(rng.uniform(0.1, 1.0, int(n / sr * 2) + 2), sr // 2)[:n].astype(np.float32), sr // 3)
        return _bandpass(_noise(rng, n), 150, 1200, sr) * env

    def water_plops(rng, n, sr):  # damped sines gliding up 400 -> 1200 Hz, 3-8 per second
        m = int(0.06 * sr)
        tt = np.arange(m) / sr
        f = rng.uniform(350, 500) * np.exp(tt / 0.06 * np.log(rng.uniform(2.2, 3.0)))
        plop = (np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-tt / 0.015)).astype(np.float32)
        rate = rng.uniform(3, 8)
        return _events(n, sr, np.cumsum(rng.exponential(1 / rate, int(rate * n / sr * 2) + 2)), lambda i: plop)

    def morse_beeps(rng, n, sr):  # a 600-800 Hz tone keyed in dots and dashes
        unit = rng.uniform(0.06, 0.1)
        keys = np.zeros(n, np.float32)
        t = 0.0
        while t < n / sr:
            on = unit * (3 if rng.random() < 0.4 else 1)
            a, b = int(t * sr), min(n, int((t + on) * sr))
            keys[a:b] = 1.0
            t += on + unit * (3 if rng.random() < 0.3 else 1)
        return _sine(rng.uniform(600, 800), n, sr) * _smooth(keys, int(0.004 * sr))

    def engine_rumble(rng, n, sr):  # firing pulses at 25-45 Hz through a low band, slowly revving
        f0 = rng.uniform(25, 45) * (1 + 0.15 * _sine(rng.uniform(0.1, 0.3), n, sr))
        pulses = _wavetable(f0, n, sr, np.ones(12) / np.arange(1, 13))
        return _bandpass(pulses + 0.3 * _noise(rng, n), 40, 400, sr)

    def cricket_trill(rng, n, sr):  # 4-5.5 kHz pulses in triplets, twice a second
        f = rng.uniform(4000, 5500)
        burst = _sine(f, n, sr) * _gate(n, sr, 0.02, 0.02, 0.0, ramp_s=0.002)
        return burst * _gate(n, sr, 0.12, rng.uniform(0.3, 0.5), rng.uniform(0, 0.5), ramp_s=0.005)

    return {"tremolo organ": tremolo_organ, "gusty wind": gusty_wind, "water plops": water_plops,
            "morse beeps": morse_beeps, "engine rumble": engine_rumble, "cricket trill": cricket_trill}


def _render(labels, seed: int, synths) -> np.ndarray:
    from pipelines.make_mini_audioset import _level

    rng = np.random.default_rng(seed)
    n = int(SECONDS * SR)
    mix = _level(rng.standard_normal(n).astype(np.float32), rng.uniform(-58, -48))
    for j, lab in enumerate(labels):
        m = int((rng.uniform(0.5, 1.0) if j == 0 else rng.uniform(0.3, 0.7)) * n)
        s = int(rng.uniform(0, 1) * (n - m))
        mix[s : s + m] += _level(synths[lab](rng, m, SR), rng.uniform(-28, -16))
    return mix / max(1.0, float(np.abs(mix).max()) / 0.98)


def make_dataset(folder: Path, per_class: int, seed: int = 0) -> dict:
    """WAV files + train.csv / eval.csv ('per_class' training clips led by each class, half as many for eval)."""
    import soundfile as sf

    synths = _classes()
    names = sorted(synths)
    out = {}
    for split, count, code in (("train", per_class, 1), ("eval", max(1, per_class // 2), 2)):
        rng = np.random.default_rng([seed, code])
        rows = ["path,labels"]
        for i in range(count * len(names)):
            labels = [names[i % len(names)]]
            if rng.random() < 0.35:
                labels.append(str(rng.choice([x for x in names if x != labels[0]])))
            rel = f"audio/{split}_{i:04d}.wav"
            path = folder / rel
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, _render(labels, seed * 100003 + code * 10007 + i, synths), SR, subtype="PCM_16")
            rows.append(f"{rel},{';'.join(labels)}")
        out[split] = folder / f"{split}.csv"
        out[split].write_text("\n".join(rows) + "\n")
    return out


def run_finetune(csvs: dict, init_from: str, name: str, runs: Path, data: Path, extra) -> tuple[dict, list]:
    cmd = [sys.executable, "-m", "pipelines.finetune", "--train-csv", str(csvs["train"]), "--eval-csv", str(csvs["eval"]),
           "--init-from", init_from, "--name", name, "--runs", str(runs), "--data-dir", str(data), *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    summary = json.loads((runs / "finetune" / name / "eval" / "summary.json").read_text())
    train = json.loads((runs / "finetune" / name / "summary.json").read_text())
    return {"mAP": summary["mAP"], "mAUC": summary["mAUC"], "steps": train["global_steps"], "seconds": seconds}, cmd


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("args", nargs="*", help="training overrides for both runs (key=value)")
    p.add_argument("--parent", default=str(REPO / "runs" / "release" / "convnext_atto_dcls_audio-mini-seed0"))
    p.add_argument("--per-class", type=int, default=40, help="training clips led by each class (eval: half)")
    p.add_argument("--work", default=str(REPO / ".bench" / "finetune_vs_scratch"))
    ns = p.parse_intermixed_args()
    if not Path(ns.parent).is_dir():
        print(f"no parent release at {ns.parent}: run `make train-audioset` first", file=sys.stderr)
        return 1
    work = Path(ns.work)
    csvs = make_dataset(work / "other_sounds", ns.per_class)
    results = {}
    for label, init in (("fine-tuned", ns.parent), ("from scratch", "none")):
        results[label], cmd = run_finetune(csvs, init, f"other-sounds-{'ft' if init != 'none' else 'scratch'}", work / "runs", work / "data", ns.args)
        print(f"{label}: {' '.join(cmd)}")
    print(f"\n{ns.per_class * 6} training / {ns.per_class // 2 * 6} eval clips of 6 new classes, configs/finetune_cpu.yaml {' '.join(ns.args)}; CPU: {_cpu()}")
    print("| | eval mAP | eval mAUC | steps | wall s |\n|---|---|---|---|---|")
    for label, r in results.items():
        print(f"| {label} | {r['mAP']:.4f} | {r['mAUC']:.4f} | {r['steps']} | {r['seconds']:.0f} |")
    ft, sc = results["fine-tuned"], results["from scratch"]
    print(f"fine-tuned / from scratch mAP: {ft['mAP'] / sc['mAP']:.2f}x (same seed, steps and eval set)")
    print(f"reproduce: python benchmarks/finetune_vs_scratch.py --parent {ns.parent} --per-class {ns.per_class} {' '.join(ns.args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
