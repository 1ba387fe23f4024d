"""``make train-audioset``: feature stores -> training -> evaluation -> release, in one command.

With AudioSet (``AUDIOSET_ROOT`` or ``--audioset-root``): the official segment CSVs
plus audio folders, or PANNs HDF5 packs, are found under the root; each split is
precomputed into a store unless it already is (a killed precompute resumes) --
waveform stores (``data/stores/audioset_waveform/``) for the paper recipes, whose
augmentation (``augment: dcls_audio``) and front end run on the GPU, log-mel stores
(``data/stores/audioset/``) for a recipe with ``augment: specaugment|none``; the
recipe is trained (``CONFIG``, default configs/convnext_tiny_dcls.yaml) on balanced +
unbalanced and evaluated on eval::

    make train-audioset AUDIOSET_ROOT=/data/audioset                    # one GPU
    make train-audioset AUDIOSET_ROOT=/data/audioset NPROC=8            # torchrun, 8 GPUs
    make train-audioset AUDIOSET_ROOT=/data/audioset CONFIG=configs/fastvit_sa24_dcls.yaml ARGS="seed=1"

or directly (CPU / one GPU / N GPUs — NPROC > 1 starts torchrun)::

    python -m pipelines.train_audioset --audioset-root /data/audioset --device cpu
    python -m pipelines.train_audioset --audioset-root /data/audioset
    python -m pipelines.train_audioset --audioset-root /data/audioset --nproc 8 seed=1

``CONFIG`` alone (no root) trains that recipe on the stores it names.

Without either it runs the EMBEDDED DEFAULT on this machine's CPU: it builds the
synthetic mini-AudioSet (16 synthesisable AudioSet classes, official layout),
precomputes it through the same ingest as real AudioSet, trains the small DCLS
recipe (configs/cpu_mini.yaml), evaluates it, writes the release folder
runs/release/convnext_atto_dcls_audio-mini-seed0 (releases are named
``{model}-{dataset}-seed{seed}``, or ``name=...``) and a short report
(runs/mini/REPORT.md). A rerun reuses what is already built and trained.

``INIT_FROM`` (``--init-from``) passes ``init_from=`` to the training: start from a
release folder or checkpoint of ours, or from an upstream (ImageNet) checkpoint.

Layouts found under AUDIOSET_ROOT, per split (balanced_train, unbalanced_train, eval):
  * CSV ``{root}/{split}_segments.csv`` (or ``{root}/metadata/...``) + audio in
    ``{root}/audio/{split}_segments/``, ``{root}/audios/{split}_segments/`` or
    ``{root}/{split}_segments/`` (files ``Y{YTID}.ext``, ``{YTID}_{start}_{end}.ext``, ...);
  * PANNs HDF5: ``{root}/hdf5s/waveforms/{split}.h5`` or ``{root}/{split}.h5``
    (unbalanced: every ``.h5`` in ``.../unbalanced_train/``).
A missing unbalanced split is allowed (balanced only, with a warning).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from audio_dcls.io import atomic_write
log = logging.getLogger("pipelines.train_audioset")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PAPER_CONFIG = "configs/convnext_tiny_dcls.yaml"
MINI_CONFIG = "configs/cpu_mini.yaml"


def config_path(name: str) -> str:
    """A recipe path as given, or else relative to the repository (configs/ ships there)."""
    if Path(name).is_file():
        return str(Path(name))
    shipped = REPO / name
    if shipped.is_file():
        return str(shipped)
    raise SetupError(f"config file not found: {name}")
MINI_DATASET = "mini"  # the embedded default's dataset name: its release is {model}-mini-seed{seed}
EMBEDDED_RELEASE = "convnext_atto_dcls_audio-mini-seed0"  # what `make train-audioset` writes under runs/release/
# The embedded default trains on more synthetic clips than make_mini_audioset's default
# (384): with 384 the small model fits the training set (mAP 0.99) but stays near 0.85 on
# eval; 2048 clips cost ~1 min more to synthesise and lift eval mAP above 0.9.
MINI_TRAIN_CLIPS = 2048
MINI_EVAL_CLIPS = 192
SPLITS = ("balanced_train", "unbalanced_train", "eval")


class SetupError(ValueError):
    """Input that cannot be used (one-line message)."""


@dataclass
class SplitInput:
    split: str
    kind: str  # 'audioset' or 'hdf5'
    csv: Optional[Path] = None
    audio_dir: Optional[Path] = None
    hdf5: Optional[List[Path]] = None

    def describe(self) -> str:
        if self.kind == "hdf5":
            return f"{len(self.hdf5)} HDF5 pack(s) in {self.hdf5[0].parent}"
        return f"{self.csv} + {self.audio_dir}"


def find_split(root: Path, split: str) -> Optional[SplitInput]:
    stem = f"{split}_segments"
    for folder in (root / "hdf5s" / "waveforms", root / "hdf5s", root):
        if split == "unbalanced_train" and (folder / "unbalanced_train").is_dir():
            packs = sorted((folder / "unbalanced_train").glob("*.h5"))
            if packs:
                return SplitInput(split, "hdf5", hdf5=packs)
        if (folder / f"{split}.h5").is_file():
            return SplitInput(split, "hdf5", hdf5=[folder / f"{split}.h5"])
    csv = next((p for p in (root / f"{stem}.csv", root / "metadata" / f"{stem}.csv") if p.is_file()), None)
    audio = next((d for d in (root / "audio" / stem, root / "audios" / stem, root / stem) if d.is_dir()), None)
    if csv is not None and audio is not None:
        return SplitInput(split, "audioset", csv=csv, audio_dir=audio)
    if audio is not None and csv is None:
        raise SetupError(f"{audio} holds audio but {root / (stem + '.csv')} is missing (copy the official segment CSVs into {root})")
    return None


def find_audioset(root: Path) -> Dict[str, SplitInput]:
    if not root.is_dir():
        raise SetupError(f"AUDIOSET_ROOT {root} is not a folder")
    found = {s: f for s in SPLITS if (f := find_split(root, s)) is not None}
    for need in ("balanced_train", "eval"):
        if need not in found:
            raise SetupError(f"no {need} split under {root}: expected {need}_segments.csv + audio/{need}_segments/ or hdf5s/waveforms/{need}.h5")
    if "unbalanced_train" not in found:
        log.warning("no unbalanced_train split under %s: training on balanced_train only (the paper trains on balanced + unbalanced)", root)
    return found


def build_store(inp: SplitInput, out: Path, workers: int, overwrite: bool = False, kind: str = "logmel") -> Path:
    """Precompute one split into a store of ``kind`` (logmel or waveform). A finished store
    of the same inputs is kept as it is and an unfinished one resumed (both by
    build_feature_store); ``overwrite`` replaces a store built from other inputs instead of refusing."""
    from pipelines.precompute import build_feature_store
    from pipelines.sources import AudioSetSource, PannsHdf5Source

    source = PannsHdf5Source(inp.hdf5) if inp.kind == "hdf5" else AudioSetSource(inp.csv, audio_dir=inp.audio_dir)
    with source:
        if len(source) == 0:
            raise SetupError(f"{inp.describe()}: no clip with audio ({len(source.missing)} listed clips missing)")
        log.info("%s store %s <- %s: %d clips (%d listed clips have no audio)", kind, out, inp.split, len(source), len(source.missing))
        report = build_feature_store(source, out, workers=workers, overwrite=overwrite, kind=kind)
    log.info("%s", report.summary().replace("\n", "; "))
    return out


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def run_training(config: str, overrides: List[str], nproc: int) -> Dict:
    """Train (resuming an unfinished run in the same folder); returns its summary.json."""
    from pipelines.train_config import load_config

    from pipelines.train_config import config_differences, config_from_dict

    cfg = load_config(config, overrides)
    out = cfg.resolved_output_dir()
    summary_path = out / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("finished"):
            import yaml

            old = config_from_dict(yaml.safe_load((out / "config.yaml").read_text()))
            changed = config_differences(old, cfg)
            if changed:
                raise SetupError(f"{out} holds a finished run with other settings ({', '.join(changed[:4])}); delete the folder or choose another run name")
            log.info("%s already holds a finished run; reusing it (delete the folder to train again)", out)
            return summary
    resume = ["--resume"] if (out / "last.pt").is_file() else []
    if resume:
        log.info("resuming the unfinished run in %s", out)
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "-m", "pipelines.train", "-c", config, *overrides, *resume]
    else:
        cmd = [sys.executable, "-m", "pipelines.train", "-c", config, *overrides, *resume]
    log.info("running: %s", " ".join(cmd))
    rc = subprocess.call(cmd)
    if rc != 0:
        raise SetupError(f"training failed (exit code {rc}); see {out / 'train.log'}")
    return json.loads(summary_path.read_text())


def run_evaluation(release: Path, store: Path, out: Path, device: str, workers: int) -> Dict:
    from audio_dcls.device import resolve_device
    from pipelines.data import open_data
    from pipelines.evaluate import evaluate, load_model
    from pipelines.scoring import ScoringOptions

    dev = resolve_device(device)
    loaded = load_model(release, device=dev)
    data = open_data(str(store), frontend=loaded.frontend)
    try:
        result = evaluate(loaded, data, out, ScoringOptions(batch_size=64, device=dev, workers=workers))
    finally:
        data.close()
    log.info("evaluation: %s", result.metrics.describe())
    return result.summary


def write_report(path: Path, embedded: bool, release: Path, eval_dir: Path, summary: Dict, train_summary: Dict, seconds: float, mini: Optional[Dict] = None) -> None:
    lines = ["# make train-audioset — report", ""]
    if embedded:
        mini = mini or {}
        lines += [
            f"**This run used the EMBEDDED DEFAULT**: the synthetic mini-AudioSet ({len(mini.get('classes', [])) or 16} synthesisable AudioSet classes,",
            f"{mini.get('n_train', '?')} training and {mini.get('n_eval', '?')} evaluation clips of 10 s, built by `pipelines.make_mini_audioset`), not AudioSet.",
            "Its mAP says the pipeline works end to end; it says nothing about AudioSet accuracy.",
            "",
            "To train on real AudioSet, point the same command at your copy (official segment CSVs + audio folders, or PANNs HDF5 packs):",
            "",
            "    make train-audioset AUDIOSET_ROOT=/data/audioset            # one GPU, paper recipe configs/convnext_tiny_dcls.yaml",
            "    make train-audioset AUDIOSET_ROOT=/data/audioset NPROC=8    # 8 GPUs with torchrun",
            "    make train-audioset AUDIOSET_ROOT=/data/audioset CONFIG=configs/convformer_s18_dcls.yaml ARGS='seed=1'",
            "",
        ]
    ev = summary
    lines += [
        "| | |",
        "|---|---|",
        f"| model | `{train_summary.get('model')}` ({train_summary.get('parameters', 0):,} parameters) |",
        f"| training | {train_summary.get('global_steps')} steps, {train_summary.get('epochs')} epochs, {train_summary.get('train_clips')} clips, {train_summary.get('seconds')} s |",
        f"| eval mAP | **{ev['mAP']:.4f}** over {ev['classes_scored_ap']} of {ev['num_classes']} classes (classes without positives are not scored) |",
        f"| eval mAUC / d′ | {ev['mAUC']:.4f} / {ev['d_prime']:.3f} (mean per-class d′ {ev['mean_class_d_prime']:.3f}) |",
        f"| eval clips | {ev['num_clips']} scored, {ev['clips_skipped']} skipped |",
        f"| release folder | `{release}` (what the service loads: model.safetensors, config.yaml, labels.csv) |",
        f"| per-class table | `{eval_dir / 'per_class.csv'}` |",
        f"| plots | `{eval_dir / 'ap_per_class.png'}`" + (f", `{eval_dir / 'dcls_positions.png'}`" if (eval_dir / "dcls_positions.png").exists() else "") + " |",
        f"| wall time | {seconds:.0f} s for this command |",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "\n".join(lines))


def run_embedded(args, overrides: List[str]) -> int:
    from pipelines.make_mini_audioset import build_mini_audioset

    t0 = time.perf_counter()
    log.info("no AUDIOSET_ROOT or CONFIG given: running the EMBEDDED DEFAULT (synthetic mini-AudioSet, CPU recipe %s)", MINI_CONFIG)
    data = Path(args.data_dir) / "embedded_mini_audioset"
    stores = Path(args.stores) if args.stores else Path(args.data_dir) / "stores"
    workers = args.workers or _cores()
    description = build_mini_audioset(data, n_train=MINI_TRAIN_CLIPS, n_eval=MINI_EVAL_CLIPS, workers=workers)
    log.info("mini-AudioSet ready in %s (%.0f s)", data, time.perf_counter() - t0)
    # These stores are derived from the folder above and nothing else: rebuilt when it changes.
    train_store = build_store(SplitInput("balanced_train", "audioset", data / "balanced_train_segments.csv", data / "audio" / "balanced_train_segments"), stores / "embedded_mini_train", workers, overwrite=True)
    eval_store = build_store(SplitInput("eval", "audioset", data / "eval_segments.csv", data / "audio" / "eval_segments"), stores / "embedded_mini_eval", workers, overwrite=True)
    runs = Path(args.runs)
    run_dir = runs / "mini" / "convnext_atto_dcls_audio-seed{seed}"
    base = [f"train=[{train_store}]", f"eval={eval_store}", f"dataset={MINI_DATASET}", f"output_dir={run_dir}", f"release_dir={runs / 'release'}/{{name}}"]
    if args.device != "auto":
        base.append(f"device={args.device}")
    if args.init_from:
        base.append(f"init_from={args.init_from}")
    train_summary = run_training(config_path(args.config or MINI_CONFIG), base + overrides, 1)
    release = Path(train_summary["release"])
    eval_dir = Path(train_summary["run_dir"]) / "eval"
    summary = run_evaluation(release, eval_store, eval_dir, "cpu" if args.device == "auto" else args.device, 0)
    seconds = time.perf_counter() - t0
    report = runs / "mini" / "REPORT.md"
    write_report(report, True, release, eval_dir, summary, train_summary, seconds, description)
    print(report.read_text(encoding="utf-8"))
    print(f"EMBEDDED DEFAULT finished: eval mAP {summary['mAP']:.4f} on the synthetic mini-AudioSet; release folder {release}; report {report}")
    return 0


def store_kind(config: str, overrides: List[str]) -> str:
    """The store a recipe trains on: waveforms for augment=dcls_audio (the paper recipes), else log-mels."""
    from pipelines.train_config import load_config

    return "waveform" if load_config(config, overrides, require_data=False).augment == "dcls_audio" else "logmel"


def run_audioset(args, overrides: List[str]) -> int:
    t0 = time.perf_counter()
    config = config_path(args.config or DEFAULT_PAPER_CONFIG)
    base: List[str] = []
    eval_store: Optional[Path] = None
    if args.audioset_root:
        root = Path(args.audioset_root)
        found = find_audioset(root)
        kind = store_kind(config, overrides)
        stores = Path(args.stores) if args.stores else Path(args.data_dir) / "stores" / ("audioset_waveform" if kind == "waveform" else "audioset")
        workers = args.workers or _cores()
        built = {s: build_store(inp, stores / s, workers, kind=kind) for s, inp in found.items()}
        train = [str(built[s]) for s in ("balanced_train", "unbalanced_train") if s in built]
        eval_store = built["eval"]
        base += [f"train=[{','.join(train)}]", f"eval={eval_store}"]
    if args.device != "auto":
        base.append(f"device={args.device}")
    if args.init_from:
        base.append(f"init_from={args.init_from}")
    train_summary = run_training(config, base + overrides, args.nproc)
    if eval_store is None and train_summary.get("eval_data"):
        eval_store = Path(train_summary["eval_data"])
    if "release" not in train_summary or eval_store is None:
        print(f"trained; no {'release' if 'release' not in train_summary else 'eval set'} to evaluate. Run folder: {train_summary['run_dir']}")
        return 0
    release = Path(train_summary["release"])
    eval_dir = Path(train_summary["run_dir"]) / "eval"
    summary = run_evaluation(release, eval_store, eval_dir, args.device, args.workers or min(8, _cores()))
    report = Path(train_summary["run_dir"]) / "REPORT.md"
    write_report(report, False, release, eval_dir, summary, train_summary, time.perf_counter() - t0)
    print(report.read_text(encoding="utf-8"))
    return 0


def _parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(prog="python -m pipelines.train_audioset", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="training config overrides anywhere on the line (python -m pipelines.train --help-config)")
    p.add_argument("--audioset-root", default=env.get("AUDIOSET_ROOT") or None, help="AudioSet copy (default: $AUDIOSET_ROOT)")
    p.add_argument("--config", default=env.get("CONFIG") or None, help="training recipe (default: $CONFIG, else the paper's ConvNeXt-T DCLS with AudioSet, the CPU recipe without)")
    p.add_argument("--nproc", type=int, default=int(env.get("NPROC") or 1), help="processes (GPUs) for torchrun (default: $NPROC or 1)")
    p.add_argument("--init-from", default=env.get("INIT_FROM") or None, help="start from these weights (init_from=; default: $INIT_FROM): a release folder, a last.pt, or an upstream checkpoint")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--data-dir", default="data", help="where the mini dataset and the stores go (default %(default)s)")
    p.add_argument("--stores", default=None, help="feature store folder (default: DATA_DIR/stores[/audioset])")
    p.add_argument("--runs", default="runs", help="runs and releases of the embedded default go here (default %(default)s)")
    p.add_argument("--workers", type=int, default=0, help="precompute processes (default: all cores)")
    return p


def run_job(prog: str, overrides: Sequence[str], job: Callable[[List[str]], int]) -> int:
    """The frame of a one-command job (this one, ``pipelines.finetune``): logging, the override
    syntax, and every user mistake as one ``prog: error:`` line with exit code 1."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from pipelines.feature_store import StoreError

    try:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise SetupError(f"overrides must look like key=value, got {bad[0]!r}")
        return job(list(overrides))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    except (SetupError, StoreError, ValueError, OSError, KeyError) as e:  # ConfigError, DataError, EvaluationError are ValueErrors
        print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_intermixed_args(argv)

    def job(overrides: List[str]) -> int:
        if args.nproc < 1:
            raise SetupError("NPROC / --nproc must be >= 1")
        if args.audioset_root or args.config:
            return run_audioset(args, overrides)
        if args.nproc > 1:
            raise SetupError("NPROC > 1 needs AudioSet (AUDIOSET_ROOT=...) or a CONFIG; the embedded default trains on one CPU process")
        return run_embedded(args, overrides)

    return run_job("train_audioset", args.overrides, job)


if __name__ == "__main__":
    sys.exit(main())
