"""Batch evaluation of a trained tagger: mAP, mAUC, d′, per-class table and plots.

The model comes from a release folder (what training writes and the service
loads) or a training checkpoint (``last.pt``; its EMA weights when it has them);
the data from a feature store, or from audio decoded on the fly: an official
AudioSet segment CSV + audio folder, a ``path,labels`` CSV (+ folder), or PANNs
HDF5 packs. Outputs, in ``--out``:

    per_class.csv       index, mid, name, positives, AP, AUC (blank where undefined)
    summary.json        mAP, mAUC, d′, mean per-class d′, classes scored, clips, skipped clips,
                        clips decoded with warnings (cut short, damaged) and the warnings
    ap_per_class.png    per-class AP, sorted, with class names
    dcls_positions.png  histograms of the learned DCLS tap positions per stage (DCLS models)

CPU::

    python -m pipelines.evaluate runs/release/convnext_atto_dcls_audio-mini-seed0 \\
        --store data/stores/embedded_mini_eval --out runs/eval/mini --device cpu

Single GPU (AudioSet eval set, precomputed)::

    python -m pipelines.evaluate runs/convnext_tiny_dcls_audio-seed0/release/convnext_tiny_dcls_audio \\
        --store data/stores/eval --out runs/eval/convnext_tiny_dcls-seed0 --device cuda --batch-size 128 --workers 8

Audio folder + CSV instead of a store (decoded and turned into log-mels on the fly)::

    python -m pipelines.evaluate RELEASE --csv ../shared/audioset/eval_segments.csv --audio-dir /data/audioset/eval --out runs/eval/x
    python -m pipelines.evaluate RELEASE --csv my_sounds/eval.csv --out runs/eval/mine      # path,labels

A ``path,labels`` CSV is read into the model's own vocabulary (or ``--labels FILE``):
labels are matched by MID or display name (AudioSet names and MIDs are one class), a
label the model does not know is reported -- one line per label, with its clip count --
and its clips are scored on the labels they have (``--strict`` makes it an error).

N GPUs (each process scores a slice; scores are gathered on rank 0, which writes the outputs)::

    torchrun --nproc_per_node 8 -m pipelines.evaluate RELEASE --store data/stores/eval --out runs/eval/x --device cuda

Classes without a positive clip have no AP; they are left out of the mean and
counted in the report, never averaged in as zeros. Clips that cannot be decoded
are skipped and listed in summary.json.
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from audio_dcls.features import LogMelConfig
from audio_dcls.io import atomic_open, atomic_write_json
from audio_dcls.metrics import TaggingMetrics
from audio_dcls.labels import LabelVocabulary
from pipelines.data import DataSpec, is_custom_csv, open_data
from pipelines.distributed import dist_info, init_distributed, shutdown_distributed, torchrun_rank
from pipelines.scoring import ScoringOptions, score

log = logging.getLogger("pipelines.evaluate")


class EvaluationError(ValueError):
    """Input the evaluation cannot use (one-line message)."""


# ----------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    model: nn.Module
    arch: str
    model_args: Dict
    frontend: LogMelConfig
    labels: List[Tuple[str, str]]  # (mid, display name) per output
    source: str  # what was loaded
    weights: str  # 'release', 'ema' or 'raw'


def load_model(path: str | Path, device: torch.device | str = "cpu", weights: str = "auto") -> LoadedModel:
    """A release folder, or a training checkpoint (.pt) with ``weights`` 'auto'
    (EMA when the run kept one), 'ema' or 'raw'."""
    from audio_dcls.checkpoint import ReleaseError, load_release

    path = Path(path)
    if path.is_dir():
        try:
            rel = load_release(path, device=device)
        except ReleaseError as e:
            raise EvaluationError(str(e)) from None
        return LoadedModel(rel.model, rel.arch, rel.model_args, rel.frontend, list(rel.labels), str(path), "release")
    if not path.is_file():
        raise EvaluationError(f"{path}: no such release folder or checkpoint file")
    from audio_dcls.model_factory import build_model
    from pipelines.checkpoints import CheckpointError, read_checkpoint

    try:
        ckpt = read_checkpoint(path)
    except CheckpointError as e:
        raise EvaluationError(str(e)) from None
    labels = [tuple(x) for x in ckpt["labels"]]
    arch, model_args = ckpt["arch"], dict(ckpt["model_args"])
    model = build_model(arch, model_args, len(labels))
    if weights == "auto":
        weights = "ema" if ckpt.get("ema") is not None else "raw"
    if weights == "ema" and ckpt.get("ema") is None:
        raise EvaluationError(f"{path}: this run kept no EMA weights (ema_decay was 0); use --weights raw")
    state = ckpt["ema"] if weights == "ema" else ckpt["model"]
    model.load_state_dict(state)
    model.to(device).eval()
    return LoadedModel(model, arch, model_args, LogMelConfig.from_dict(ckpt["frontend"]), labels, str(path), weights)


# ----------------------------------------------------------------------------------
# reports
# ----------------------------------------------------------------------------------
def write_per_class_csv(path: Path, metrics: TaggingMetrics, labels: Sequence[Tuple[str, str]]) -> None:
    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "mid", "name", "positives", "AP", "AUC"])
        for i, (mid, name) in enumerate(labels):
            ap, auc = metrics.ap[i], metrics.auc[i]
            w.writerow([i, mid, name, int(metrics.positives[i]), "" if np.isnan(ap) else f"{ap:.6f}", "" if np.isnan(auc) else f"{auc:.6f}"])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_png(fig, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)


def plot_per_class_ap(path: Path, metrics: TaggingMetrics, labels: Sequence[Tuple[str, str]], max_named: int = 60, title: str = "") -> None:
    """Horizontal bars of per-class AP, best first, named. With more than
    ``max_named`` scored classes: the best and worst halves of that, plus the
    whole sorted curve in a side panel."""
    plt = _pyplot()
    order = [int(i) for i in np.argsort(-np.nan_to_num(metrics.ap, nan=-1.0)) if not np.isnan(metrics.ap[i])]
    shown = order if len(order) <= max_named else order[: max_named // 2] + order[-max_named // 2:]
    names = [f"{labels[i][1]} ({int(metrics.positives[i])})" for i in shown]
    values = [metrics.ap[i] for i in shown]
    height = max(3.0, 0.22 * len(shown) + 1.2)
    if len(order) > len(shown):
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, height), gridspec_kw={"width_ratios": [3, 2]})
        ax2.plot(np.arange(1, len(order) + 1), [metrics.ap[i] for i in order], lw=1.2)
        ax2.set_xlabel("class rank")
        ax2.set_ylabel("AP")
        ax2.set_ylim(0, 1.02)
        ax2.set_title(f"all {len(order)} scored classes")
        ax2.grid(alpha=0.3)
    else:
        fig, ax = plt.subplots(figsize=(8, height))
    y = np.arange(len(shown))
    ax.barh(y, values, color="#3b75af")
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("average precision (positives in brackets)")
    if len(order) > len(shown):
        ax.axhline(max_named // 2 - 0.5, color="k", lw=0.8, ls="--")
    head = title or "Per-class AP"
    ax.set_title(f"{head} — mAP {metrics.mAP:.4f} over {metrics.classes_scored_ap}/{metrics.num_classes} classes")
    fig.tight_layout()
    _save_png(fig, path)
    plt.close(fig)


def dcls_positions_by_stage(model: nn.Module) -> List[np.ndarray]:
    """Per stage: (2, n) learned tap positions — row 0 frequency, row 1 time — in grid cells from the centre."""
    from audio_dcls.layers import DCLS_LAYERS

    groups: Dict[int, np.ndarray] = {}
    for module in model.modules():
        if isinstance(module, tuple(DCLS_LAYERS)) and getattr(module, "P", None) is not None and module.P.shape[0] == 2:
            if id(module.P) not in groups:
                P = module.P.detach().float().cpu().numpy()  # (2, C, 1, K); coordinate 0 = time, 1 = frequency
                groups[id(module.P)] = np.stack([P[1].ravel(), P[0].ravel()])
    return list(groups.values())


def plot_dcls_positions(path: Path, model: nn.Module, title: str = "") -> bool:
    """Histograms of the learned DCLS positions per stage; False when the model has none."""
    stages = dcls_positions_by_stage(model)
    if not stages:
        return False
    plt = _pyplot()
    lim = 0.0
    for s in stages:
        lim = max(lim, float(np.abs(s).max()))
    lim = math.ceil(lim + 0.5)
    bins = np.linspace(-lim, lim, 2 * lim * 2 + 1)
    fig, axes = plt.subplots(len(stages), 2, figsize=(9, 1.9 * len(stages) + 0.8), squeeze=False, sharex=True)
    for k, s in enumerate(stages):
        for j, axis in enumerate(("frequency", "time")):
            ax = axes[k, j]
            ax.hist(s[j], bins=bins, color="#c0504d" if j == 0 else "#4f81bd")
            ax.set_ylabel(f"stage {k}\n({s.shape[1]} taps)", fontsize=8)
            if k == 0:
                ax.set_title(f"{axis} position (grid cells from centre)", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("position")
    fig.suptitle(title or "Learned DCLS tap positions per stage", fontsize=10)
    fig.tight_layout()
    _save_png(fig, path)
    plt.close(fig)
    return True


@dataclass
class EvaluationResult:
    metrics: TaggingMetrics
    summary: Dict
    files: Dict[str, str]


def evaluate(loaded: LoadedModel, data: DataSpec, out: Optional[Path], options: ScoringOptions = ScoringOptions()) -> EvaluationResult:
    """Score ``data`` with ``loaded`` and (on rank 0) write the report files to ``out``."""
    result = score(loaded.model, loaded.labels, loaded.frontend, data, options)
    metrics = result.metrics
    summary = {
        **metrics.summary(),
        "model": {"source": loaded.source, "arch": loaded.arch, "weights": loaded.weights, "parameters": sum(p.numel() for p in loaded.model.parameters())},
        "data": {**data.description, "clips_listed": len(data.ids) + len(data.missing), "clips_missing": len(data.missing)},
        "clips_skipped": len(result.skipped),
        "skipped": [list(s) for s in result.skipped[:100]],
        "clips_with_warnings": len({i for i, _ in result.warned}),
        "decode_warnings": [list(w) for w in result.warned[:100]],
        "data_classes_not_predicted": len(result.data_classes_not_predicted),
        "unknown_labels": dict(sorted(data.unknown_labels.items())),
        "device": str(options.device),
        "seconds": round(result.seconds, 2),
        "clips_per_second": round(result.clips_scored / max(result.seconds, 1e-9), 2),
    }
    files: Dict[str, str] = {}
    if out is not None and dist_info()[0] == 0:
        files = write_report(Path(out), loaded, metrics, summary)
    return EvaluationResult(metrics, summary, files)


def write_report(out: Path, loaded: LoadedModel, metrics: TaggingMetrics, summary: Dict) -> Dict[str, str]:
    """per_class.csv, the plots and summary.json (which lists the files) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"per_class": str(out / "per_class.csv")}
    write_per_class_csv(out / "per_class.csv", metrics, loaded.labels)
    plot_per_class_ap(out / "ap_per_class.png", metrics, loaded.labels, title=f"{loaded.arch}")
    files["ap_plot"] = str(out / "ap_per_class.png")
    if plot_dcls_positions(out / "dcls_positions.png", loaded.model, title=f"{loaded.arch}: learned DCLS positions per stage"):
        files["positions_plot"] = str(out / "dcls_positions.png")
    summary["files"] = dict(files)
    atomic_write_json(out / "summary.json", summary)
    files["summary"] = str(out / "summary.json")
    return files


# ----------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="release folder or training checkpoint (.pt)")
    src = p.add_argument_group("data (one of)")
    src.add_argument("--store", help="feature store folder")
    src.add_argument("--csv", help="AudioSet segment CSV (with --audio-dir) or path,labels CSV")
    src.add_argument("--hdf5", help="PANNs-style HDF5 pack")
    src.add_argument("--audio-dir", help="audio folder for --csv")
    p.add_argument("--labels", help="path,labels --csv only: read the labels into this vocabulary (index,mid,display_name CSV or one label per line) instead of the model's")
    p.add_argument("--strict", action="store_true", help="path,labels --csv only: a label outside the vocabulary is an error (default: reported, and the clip scored on its other labels)")
    p.add_argument("--out", required=True, help="folder for per_class.csv, summary.json and the plots")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default %(default)s)")
    p.add_argument("--weights", choices=["auto", "ema", "raw"], default="auto", help="checkpoints only: EMA or raw weights (auto: EMA when kept)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0 = default)")
    return p


def open_evaluation_data(spec: str, args: argparse.Namespace, loaded: LoadedModel) -> DataSpec:
    """The data to score: a path,labels CSV in the model's vocabulary (or --labels), anything else as it is."""
    custom = bool(args.csv) and is_custom_csv(spec)
    if (args.labels or args.strict) and not custom:
        raise EvaluationError("--labels and --strict apply to a path,labels --csv")
    vocabulary = None
    if custom:
        vocabulary = LabelVocabulary.from_file(args.labels) if args.labels else LabelVocabulary([m for m, _ in loaded.labels], [n for _, n in loaded.labels])
    return open_data(spec, audio_dir=args.audio_dir, frontend=loaded.frontend, vocabulary=vocabulary, strict=args.strict)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    rank = torchrun_rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = None
    try:
        given = [x for x in (args.store, args.csv, args.hdf5) if x]
        if len(given) != 1:
            raise EvaluationError("give exactly one of --store, --csv or --hdf5")
        if args.batch_size < 1 or args.workers < 0:
            raise EvaluationError("--batch-size must be >= 1 and --workers >= 0")
        if args.threads:
            torch.set_num_threads(args.threads)
        device = init_distributed(args.device).device
        loaded = load_model(args.model, device=device, weights=args.weights)
        data = open_evaluation_data(given[0], args, loaded)
        options = ScoringOptions(args.batch_size, device, args.workers, torch.bfloat16 if args.amp else None)
        result = evaluate(loaded, data, Path(args.out), options)
        if rank == 0:
            s = result.summary
            for label, clips in s["unknown_labels"].items():
                print(f"unknown label {label!r} ({clips} clips): not a class of the model; those clips are scored on their other labels")
            print(
                f"{loaded.arch} on {given[0]}: {result.metrics.describe()}; {s['clips_skipped']} clips skipped, "
                f"{s['clips_with_warnings']} scored with decode warnings, {s['clips_per_second']} clips/s"
            )
            print(f"wrote {', '.join(result.files.values())}")
        return 0
    except KeyboardInterrupt:
        print("evaluate: interrupted", file=sys.stderr)
        return 130
    except (EvaluationError, ValueError, OSError, KeyError) as e:
        print(f"evaluate: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    finally:
        if data is not None:
            data.close()
        shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main())
