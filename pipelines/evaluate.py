"""Batch evaluation of a trained tagger: mAP, mAUC, d′, per-class table and plots.

The model comes from a release folder (what training writes and the service
loads) or a training checkpoint (``last.pt``; its EMA weights when it has them);
the data from a feature store, or from audio decoded on the fly: an official
AudioSet segment CSV + audio folder, a ``path,labels`` CSV (+ folder), or PANNs
HDF5 packs. Outputs, in ``--out``:

    per_class.csv       index, mid, name, positives, AP, AUC (blank where undefined)
    summary.json        mAP, mAUC, d′, mean per-class d′, classes scored, clips, skipped clips
    ap_per_class.png    per-class AP, sorted, with class names
    dcls_positions.png  histograms of the learned DCLS tap positions per stage (DCLS models)

CPU::

    python -m pipelines.evaluate runs/release/convnext_atto_dcls_audio-mini \\
        --store data/stores/embedded_mini_eval --out runs/eval/mini --device cpu

Single GPU (AudioSet eval set, precomputed)::

    python -m pipelines.evaluate runs/convnext_tiny_dcls_audio-seed0/release/convnext_tiny_dcls_audio \\
        --store data/stores/eval --out runs/eval/convnext_tiny_dcls-seed0 --device cuda --batch-size 128 --workers 8

Audio folder + CSV instead of a store (decoded and turned into log-mels on the fly)::

    python -m pipelines.evaluate RELEASE --csv ../shared/audioset/eval_segments.csv --audio-dir /data/audioset/eval --out runs/eval/x

N GPUs (each process scores a slice; scores are gathered on rank 0, which writes the outputs)::

    torchrun --nproc_per_node 8 -m pipelines.evaluate RELEASE --store data/stores/eval --out runs/eval/x --device cuda

Classes without a positive clip have no AP; they are left out of the mean and
counted in the report, never averaged in as zeros. Clips that cannot be decoded
are skipped and listed in summary.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from audio_dcls.features import LogMelConfig
from audio_dcls.labels import LabelVocabulary
from audio_dcls.metrics import TaggingMetrics, tagging_metrics

log = logging.getLogger("pipelines.evaluate")


class EvaluationError(ValueError):
    """Input the evaluation cannot use (one-line message)."""


# ----------------------------------------------------------------------------------
# datasets: every item is (log-mel (1, F, T) or None, target (C,), index, skip reason)
# ----------------------------------------------------------------------------------
class StoreItems(Dataset):
    """A FeatureStore with item indices (and no skips: the store holds decoded clips)."""

    def __init__(self, store):
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int):
        x, y = self.store[i]
        return x, y, int(i), ""


class AudioItems(Dataset):
    """Clips of a ClipSource decoded and turned into log-mels when read.

    For small sets only: every epoch pays the decoding and the STFT again.
    The front end is built lazily in each DataLoader worker.
    """

    def __init__(self, source, frontend: LogMelConfig):
        self.source = source
        self.frontend = frontend
        self.num_samples = int(round(frontend.clip_seconds * frontend.sample_rate))
        self._logmel = None

    def __len__(self) -> int:
        return len(self.source)

    def __getstate__(self):
        d = self.__dict__.copy()
        d["_logmel"] = None
        return d

    def __getitem__(self, i: int):
        from audio_dcls.audio import AudioDecodeError, pad_or_trim
        from audio_dcls.features import LogMel

        clip = self.source[i]
        y = torch.from_numpy(clip.target)
        try:
            x = pad_or_trim(clip.load(self.frontend.sample_rate), self.num_samples)
        except AudioDecodeError as e:
            return None, y, int(i), f"undecodable: {e.reason}"
        except OSError as e:
            return None, y, int(i), f"unreadable: {e.strerror or e}"
        if self._logmel is None:
            self._logmel = LogMel(self.frontend).eval()
        with torch.inference_mode():
            m = self._logmel(torch.from_numpy(x).unsqueeze(0))[0]  # (1, F, T)
        return m.clone(), y, int(i), ""


def collate_items(batch):
    """-> (x (B, 1, F, T) or None, y (B, C), indices (B,), [(index, reason)] skipped)."""
    keep = [b for b in batch if not b[3]]
    skipped = [(b[2], b[3]) for b in batch if b[3]]
    if keep:
        x = torch.stack([b[0] for b in keep])
        y = torch.stack([b[1] for b in keep])
        idx = torch.tensor([b[2] for b in keep], dtype=torch.long)
    else:
        x, y, idx = None, None, torch.zeros(0, dtype=torch.long)
    return x, y, idx, skipped


@dataclass
class DataSpec:
    dataset: Dataset
    vocabulary: LabelVocabulary
    frontend: LogMelConfig
    ids: List[str]
    description: Dict = field(default_factory=dict)
    missing: List[Tuple[str, str]] = field(default_factory=list)  # listed clips without audio (source level)


def _is_audioset_csv(path: Path) -> bool:
    with open(path, encoding="utf-8-sig") as f:
        for line in f:
            if line.strip():
                return line.lstrip().startswith("#")
    return False


def open_data(spec: str, audio_dir: Optional[str] = None, frontend: Optional[LogMelConfig] = None) -> DataSpec:
    """A feature store folder, an AudioSet segment CSV (+ ``audio_dir``), a
    ``path,labels`` CSV or PANNs HDF5 file(s) -> a dataset of ``collate_items`` items.

    ``frontend``: settings for audio decoded on the fly (default: the paper's).
    """
    from pipelines.feature_store import FeatureStore, StoreError

    path = Path(spec)
    if path.is_dir():
        try:
            store = FeatureStore(path)
        except StoreError as e:
            raise EvaluationError(str(e)) from None
        return DataSpec(StoreItems(store), store.vocabulary, store.frontend, list(store.ids), {"kind": "feature_store", "path": str(path)}, list(store.skipped))
    if not path.exists():
        raise EvaluationError(f"{spec}: no such feature store folder or file")
    from pipelines.sources import AudioSetSource, CustomCsvSource, PannsHdf5Source

    frontend = frontend or LogMelConfig()
    suffix = path.suffix.lower()
    try:
        if suffix in (".h5", ".hdf5"):
            source = PannsHdf5Source(path)
        elif suffix == ".csv":
            if _is_audioset_csv(path):
                if not audio_dir:
                    raise EvaluationError(f"{spec} is an AudioSet segment CSV: give the audio folder too (--audio-dir / audio_dir=)")
                source = AudioSetSource(path, audio_dir=audio_dir)
            else:
                source = CustomCsvSource(path, audio_dir=audio_dir or None)
        else:
            raise EvaluationError(f"{spec}: expected a feature store folder, a .csv or an .h5 file")
    except (ValueError, OSError, KeyError) as e:
        if isinstance(e, EvaluationError):
            raise
        raise EvaluationError(f"{spec}: {' '.join(str(e).split())}") from None
    if len(source) == 0:
        raise EvaluationError(f"{spec}: no clip with audio ({len(source.missing)} listed clips are missing)")
    return DataSpec(
        AudioItems(source, frontend),
        source.vocabulary,
        frontend,
        [c.id for c in source.clips],
        {"kind": source.kind, **source.describe()},
        [tuple(m) for m in source.missing],
    )


# ----------------------------------------------------------------------------------
# distributed helpers
# ----------------------------------------------------------------------------------
def dist_info() -> Tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(rows: torch.Tensor, world: int) -> torch.Tensor:
    """all_gather of equally shaped (n, ...) tensors -> (world * n, ...), rank order."""
    import torch.distributed as dist

    if world == 1:
        return rows
    parts = [torch.empty_like(rows) for _ in range(world)]
    dist.all_gather(parts, rows.contiguous())
    return torch.cat(parts)


# ----------------------------------------------------------------------------------
# scoring
# ----------------------------------------------------------------------------------
@dataclass
class Predictions:
    scores: np.ndarray  # (N, C) sigmoid outputs, float32; rows of skipped clips are NaN
    targets: np.ndarray  # (N, C) multi-hot labels of the data, uint8
    scored: np.ndarray  # (N,) bool: the clip was decoded and scored
    skipped: List[Tuple[int, str]]  # (index, reason)


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Dataset,
    num_classes_data: int,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    workers: int = 0,
    amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
    progress: Optional[bool] = None,
) -> Predictions:
    """Score every item of ``dataset`` (batched, eval mode).

    Under torch.distributed each rank scores one contiguous slice and every rank
    returns the gathered result.
    """
    from tqdm import tqdm

    device = torch.device(device)
    rank, world = dist_info()
    n = len(dataset)
    per = -(-n // world)
    lo, hi = min(rank * per, n), min((rank + 1) * per, n)
    subset = torch.utils.data.Subset(dataset, range(lo, hi))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_items, pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    C_out = None
    scores = None
    targets = torch.zeros(per, num_classes_data, dtype=torch.uint8)
    scored = torch.zeros(per, dtype=torch.bool)
    skipped: List[Tuple[int, str]] = []
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None and device.type == "cuda" else nullcontext()
    show = (sys.stderr.isatty() if progress is None else progress) and rank == 0
    try:
        for x, y, idx, skip in tqdm(loader, desc="scoring", unit="batch", disable=not show, dynamic_ncols=True):
            skipped += skip
            if x is None:
                continue
            x = x.to(device, non_blocking=True).float()
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                logits = model(x)  # (B, C_out)
            p = torch.sigmoid(logits.float()).cpu()
            if scores is None:
                C_out = p.shape[1]
                scores = torch.full((per, C_out), float("nan"))
            local = idx - lo
            scores[local] = p
            targets[local] = (y > 0.5).to(torch.uint8)
            scored[local] = True
    finally:
        model.train(was_training)
    if scores is None:  # this rank scored nothing (all skipped, or an empty slice)
        C_out = _num_outputs(model)
        scores = torch.full((per, C_out), float("nan"))
    if world > 1:
        import torch.distributed as dist

        dev = device if dist.get_backend() == "nccl" else torch.device("cpu")
        scores = gather_rows(scores.to(dev), world).cpu()
        targets = gather_rows(targets.to(dev), world).cpu()
        scored = gather_rows(scored.to(dev), world).cpu()
        every = [None] * world
        dist.all_gather_object(every, skipped)
        skipped = [s for part in every for s in part]
    return Predictions(scores[:n].numpy(), targets[:n].numpy(), scored[:n].numpy(), sorted(skipped))


def _num_outputs(model: nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    if n:
        return int(n)
    raise EvaluationError("cannot tell how many classes the model predicts")


def align_targets(targets: np.ndarray, data_vocab: LabelVocabulary, model_mids: Sequence[str]) -> Tuple[np.ndarray, List[str]]:
    """Re-index data labels to the model's outputs by MID.

    Returns the (N, C_model) targets and the data classes the model does not predict.
    """
    model_mids = list(model_mids)
    if list(data_vocab.mids) == model_mids:
        return targets, []
    out = np.zeros((targets.shape[0], len(model_mids)), dtype=targets.dtype)
    col = {m: i for i, m in enumerate(data_vocab.mids)}
    common = 0
    for j, m in enumerate(model_mids):
        i = col.get(m)
        if i is not None:
            out[:, j] = targets[:, i]
            common += 1
    if common == 0:
        raise EvaluationError("the data's labels and the model's outputs have no class in common")
    model_set = set(model_mids)
    unknown = [m for m in data_vocab.mids if m not in model_set]
    return out, unknown


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
    from pipelines.train import CheckpointError, read_checkpoint, build_model

    try:
        ckpt = read_checkpoint(path)
    except CheckpointError as e:
        raise EvaluationError(str(e)) from None
    cfg = ckpt["config_obj"]
    labels = [tuple(x) for x in ckpt["labels"]]
    model, arch, model_args = build_model(cfg, len(labels))
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
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["index", "mid", "name", "positives", "AP", "AUC"])
        for i, (mid, name) in enumerate(labels):
            ap, auc = metrics.ap[i], metrics.auc[i]
            w.writerow([i, mid, name, int(metrics.positives[i]), "" if np.isnan(ap) else f"{ap:.6f}", "" if np.isnan(auc) else f"{auc:.6f}"])
    tmp.replace(path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    fig.savefig(path, dpi=110)
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


@dataclass
class EvaluationResult:
    metrics: TaggingMetrics
    summary: Dict
    files: Dict[str, str]


def evaluate(
    loaded: LoadedModel,
    data: DataSpec,
    out: Optional[Path],
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    workers: int = 0,
    amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
    progress: Optional[bool] = None,
) -> EvaluationResult:
    """Score ``data`` with ``loaded`` and (on rank 0) write the report files to ``out``."""
    if loaded.frontend != data.frontend:
        diff = [k for k, v in loaded.frontend.to_dict().items() if data.frontend.to_dict()[k] != v]
        if any(k != "clip_seconds" for k in diff):
            raise EvaluationError(f"the data was computed with other front-end settings than the model was trained with ({', '.join(diff)})")
    t0 = time.perf_counter()
    preds = predict(loaded.model, data.dataset, len(data.vocabulary), batch_size, device, workers, amp_dtype, channels_last, progress)
    seconds = time.perf_counter() - t0
    keep = preds.scored
    if not keep.any():
        raise EvaluationError(f"no clip could be scored ({len(preds.skipped)} skipped, e.g. {preds.skipped[0][1] if preds.skipped else '?'})")
    targets, unknown = align_targets(preds.targets[keep], data.vocabulary, [m for m, _ in loaded.labels])
    metrics = tagging_metrics(targets, preds.scores[keep])
    skipped = [(data.ids[i], reason) for i, reason in preds.skipped]
    summary = {
        **metrics.summary(),
        "model": {"source": loaded.source, "arch": loaded.arch, "weights": loaded.weights, "parameters": sum(p.numel() for p in loaded.model.parameters())},
        "data": {**data.description, "clips_listed": len(data.ids) + len(data.missing), "clips_missing": len(data.missing)},
        "clips_skipped": len(skipped),
        "skipped": [list(s) for s in skipped[:100]],
        "data_classes_not_predicted": len(unknown),
        "device": str(device),
        "seconds": round(seconds, 2),
        "clips_per_second": round(int(keep.sum()) / max(seconds, 1e-9), 2),
    }
    files: Dict[str, str] = {}
    rank, _ = dist_info()
    if out is not None and rank == 0:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_per_class_csv(out / "per_class.csv", metrics, loaded.labels)
        files["per_class"] = str(out / "per_class.csv")
        plot_per_class_ap(out / "ap_per_class.png", metrics, loaded.labels, title=f"{loaded.arch}")
        files["ap_plot"] = str(out / "ap_per_class.png")
        if plot_dcls_positions(out / "dcls_positions.png", loaded.model, title=f"{loaded.arch}: learned DCLS positions per stage"):
            files["positions_plot"] = str(out / "dcls_positions.png")
        summary["files"] = dict(files)
        tmp = out / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        tmp.replace(out / "summary.json")
        files["summary"] = str(out / "summary.json")
    return EvaluationResult(metrics, summary, files)


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
    p.add_argument("--out", required=True, help="folder for per_class.csv, summary.json and the plots")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default %(default)s)")
    p.add_argument("--weights", choices=["auto", "ema", "raw"], default="auto", help="checkpoints only: EMA or raw weights (auto: EMA when kept)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0 = default)")
    return p


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EvaluationError("--device cuda, but CUDA is not available here")
    return dev


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    import torch.distributed as dist

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        given = [x for x in (args.store, args.csv, args.hdf5) if x]
        if len(given) != 1:
            raise EvaluationError("give exactly one of --store, --csv or --hdf5")
        if args.batch_size < 1 or args.workers < 0:
            raise EvaluationError("--batch-size must be >= 1 and --workers >= 0")
        if args.threads:
            torch.set_num_threads(args.threads)
        device = _device(args.device)
        if distributed:
            if device.type == "cuda":
                device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        import audio_dcls  # noqa: F401  (registers the models)

        loaded = load_model(args.model, device=device, weights=args.weights)
        data = open_data(given[0], audio_dir=args.audio_dir, frontend=loaded.frontend)
        result = evaluate(loaded, data, Path(args.out), args.batch_size, device, args.workers, torch.bfloat16 if args.amp else None, False)
        if rank == 0:
            s = result.summary
            print(f"{loaded.arch} on {given[0]}: {result.metrics.describe()}; {s['clips_skipped']} clips skipped, {s['clips_per_second']} clips/s")
            print(f"wrote {', '.join(result.files.values())}")
        return 0
    except KeyboardInterrupt:
        print("evaluate: interrupted", file=sys.stderr)
        return 130
    except (EvaluationError, ValueError, OSError) as e:
        print(f"evaluate: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
