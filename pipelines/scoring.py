"""Scoring a dataset with a model: batched prediction, DDP gathering, target alignment, metrics.

One path for both users: ``pipelines.evaluate`` and the evaluation during training
call :func:`score`, so both check the front end, align the data's labels to the
model's outputs by MID and count skipped clips the same way.
"""
from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from audio_dcls.features import LogMelConfig
from audio_dcls.labels import LabelVocabulary
from audio_dcls.metrics import TaggingMetrics, tagging_metrics
from pipelines.data import DataError, DataSpec, collate_items
from pipelines.distributed import dist_info, gather_objects, gather_rows
from pipelines.feature_store import LOGMEL
from pipelines.model_input import scoring_input


class NothingScored(DataError):
    """Every clip was skipped (undecodable, unreadable): there is nothing to measure."""


@dataclass
class Predictions:
    scores: np.ndarray  # (N, C) sigmoid outputs, float32; rows of skipped clips are NaN
    targets: np.ndarray  # (N, C) multi-hot labels of the data, uint8
    scored: np.ndarray  # (N,) bool: the clip was decoded and scored
    skipped: List[Tuple[int, str]]  # (index, reason)
    warned: List[Tuple[int, str]] = field(default_factory=list)  # (index, decode warning) of scored clips


def _num_outputs(model: nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    if n:
        return int(n)
    raise DataError("cannot tell how many classes the model predicts")


def _score_slice(model, inputs: nn.Module, loader, lo: int, per: int, num_classes_data: int, device, amp_dtype, channels_last: bool, show: bool):
    """Scores of the clips [lo, lo + per) this rank reads -> (scores, targets, scored, skipped, warned)."""
    from tqdm import tqdm

    scores = None
    targets = torch.zeros(per, num_classes_data, dtype=torch.uint8)
    scored = torch.zeros(per, dtype=torch.bool)
    skipped: List[Tuple[int, str]] = []
    warned: List[Tuple[int, str]] = []
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None and device.type == "cuda" else nullcontext()
    for x, y, idx, skip, warn in tqdm(loader, desc="scoring", unit="batch", disable=not show, dynamic_ncols=True):
        skipped += skip
        warned += warn
        if x is None:
            continue
        x = inputs(x.to(device, non_blocking=True))  # the front end on the device for waveforms
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = model(x)  # (B, C_out)
        p = torch.sigmoid(logits.float()).cpu()
        if scores is None:
            scores = torch.full((per, p.shape[1]), float("nan"))
        local = idx - lo
        scores[local] = p
        targets[local] = (y > 0.5).to(torch.uint8)
        scored[local] = True
    if scores is None:  # this rank scored nothing (all skipped, or an empty slice)
        scores = torch.full((per, _num_outputs(model)), float("nan"))
    return scores, targets, scored, skipped, warned


@dataclass(frozen=True)
class ScoringOptions:
    batch_size: int = 64  # clips per forward pass
    device: torch.device | str = "cpu"
    workers: int = 0  # DataLoader worker processes
    amp_dtype: Optional[torch.dtype] = None  # autocast dtype on CUDA (None: full precision)
    channels_last: bool = False  # NHWC inputs
    progress: Optional[bool] = None  # a tqdm bar on rank 0 (None: when stderr is a terminal)


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, num_classes_data: int, options: ScoringOptions = ScoringOptions(), inputs: Optional[nn.Module] = None) -> Predictions:
    """Score every item of ``dataset`` (batched, eval mode; the model's mode is restored after).

    ``inputs`` turns a loaded batch into model input on the device (a
    :class:`~pipelines.model_input.ModelInput` in eval mode: the front end for waveform
    items; default: the items are log-mels). Under torch.distributed each rank scores one
    contiguous slice and every rank returns the gathered result.
    """
    if inputs is None:
        inputs = scoring_input(LogMelConfig(), LOGMEL)
    device = torch.device(options.device)
    rank, world = dist_info()
    n = len(dataset)
    per = -(-n // world)
    lo, hi = min(rank * per, n), min((rank + 1) * per, n)
    loader = DataLoader(Subset(dataset, range(lo, hi)), batch_size=options.batch_size, shuffle=False, num_workers=options.workers, collate_fn=collate_items, pin_memory=device.type == "cuda")
    show = (sys.stderr.isatty() if options.progress is None else options.progress) and rank == 0
    was_training = model.training
    model.eval()
    try:
        scores, targets, scored, skipped, warned = _score_slice(model, inputs.to(device), loader, lo, per, num_classes_data, device, options.amp_dtype, options.channels_last, show)
    finally:
        model.train(was_training)
    if world > 1:
        scores, targets, scored = (gather_rows(t, world) for t in (scores, targets, scored))
        skipped = [s for part in gather_objects(skipped, world) for s in part]
        warned = [w for part in gather_objects(warned, world) for w in part]
    return Predictions(scores[:n].numpy(), targets[:n].numpy(), scored[:n].numpy(), sorted(skipped), sorted(warned))


def as_vocabulary(labels) -> LabelVocabulary:
    """A LabelVocabulary, or the (mid, display name) pairs of a model's outputs."""
    if isinstance(labels, LabelVocabulary):
        return labels
    pairs = list(labels)
    return LabelVocabulary([m for m, _ in pairs], [n for _, n in pairs])


def align_targets(targets: np.ndarray, data_vocab: LabelVocabulary, model_labels) -> Tuple[np.ndarray, List[str]]:
    """Re-index data labels to the model's outputs, class by class (by MID where both have
    one, else by display name: ``LabelVocabulary.match``).

    ``model_labels``: the model's vocabulary, or its (mid, display name) per output.
    Returns the (N, C_model) targets and the data classes (keys) the model does not predict.
    """
    model_vocab = as_vocabulary(model_labels)
    if model_vocab == data_vocab:
        return targets, []
    rows = data_vocab.match(model_vocab)
    out = np.zeros((targets.shape[0], len(model_vocab)), dtype=targets.dtype)
    for j, i in enumerate(rows):
        if i is not None:
            out[:, j] = targets[:, i]
    if all(i is None for i in rows):
        raise DataError(f"the data's labels and the model's outputs have no class in common (data: {', '.join(data_vocab.display_names[:3])}...; model: {', '.join(model_vocab.display_names[:3])}...)")
    predicted = {i for i in rows if i is not None}
    unknown = [k for i, k in enumerate(data_vocab.keys) if i not in predicted]
    return out, unknown


def check_frontend(model_frontend: LogMelConfig, data_frontend: LogMelConfig) -> None:
    """The data's log-mels must be the model's; only the clip length may differ (global pooling)."""
    if model_frontend == data_frontend:
        return
    data = data_frontend.to_dict()
    diff = [k for k, v in model_frontend.to_dict().items() if data[k] != v]
    if any(k != "clip_seconds" for k in diff):
        raise DataError(f"the data was computed with other front-end settings than the model was trained with ({', '.join(diff)})")


@dataclass
class Scores:
    metrics: TaggingMetrics  # over the scored clips, targets aligned to the model's outputs
    skipped: List[Tuple[str, str]]  # (clip id, reason) of every clip that could not be scored
    data_classes_not_predicted: List[str]  # classes of the data (MID, else name) the model has no output for
    clips_scored: int
    seconds: float  # wall time of the prediction
    warned: List[Tuple[str, str]] = field(default_factory=list)  # (clip id, decode warning) of clips scored all the same


def score(model: nn.Module, model_labels, model_frontend: LogMelConfig, data: DataSpec, options: ScoringOptions = ScoringOptions()) -> Scores:
    """Check the front end, predict every clip of ``data``, align its labels to the model's
    (``model_labels``: its LabelVocabulary or (mid, name) per output) and compute the tagging
    metrics. Raises NothingScored when every clip was skipped."""
    check_frontend(model_frontend, data.frontend)
    t0 = time.perf_counter()
    preds = predict(model, data.dataset, len(data.vocabulary), options, scoring_input(model_frontend, data.item_kind))  # the model's front end, for waveforms
    seconds = time.perf_counter() - t0
    skipped = [(data.ids[i], reason) for i, reason in preds.skipped]
    keep = preds.scored
    if not keep.any():
        raise NothingScored(f"no clip could be scored ({len(skipped)} skipped, e.g. {skipped[0][1] if skipped else '?'})")
    targets, unknown = align_targets(preds.targets[keep], data.vocabulary, model_labels)
    metrics = tagging_metrics(targets, preds.scores[keep])
    warned = [(data.ids[i], w) for i, w in preds.warned]
    return Scores(metrics, skipped, unknown, int(keep.sum()), seconds, warned)
