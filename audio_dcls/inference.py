"""Inference over waveforms: class scores and embeddings from one forward pass.

The service (``service.registry``, ``service.tagging``), the Python
:class:`audio_dcls.Tagger` and ``pipelines.embed`` all run through this
module, so a file gets the same numbers whichever of them reads it:

* :func:`prepare_release` -- a release folder loaded, its model prepared for
  inference (DCLS kernels folded, FastViT branches merged, channels_last) and
  put behind the release's own log-mel front end: a :class:`WaveformModel`;
* :class:`WaveformModel` -- waveforms (B, samples) -> :class:`ModelOutput`
  (probabilities (B, C), embeddings (B, D)), both from one forward;
* :func:`clip_scores` / :func:`clip_embedding` -- the clip's reading from its
  windows (``audio_dcls.windowing``): a class's score is its maximum over the
  windows (a sound is present if any window hears it), the embedding the mean.

The embedding is the vector the classifier reads: timm's
``forward_head(forward_features(x), pre_logits=True)``. Per family:

* ConvNeXt: global average pool + LayerNorm -- 768 for ConvNeXt-T;
* ConvFormer: global average pool + LayerNorm, the input of its MLP head
  (Linear 512->2048, SquaredReLU, LayerNorm, Linear 2048->527) -- 512 for
  ConvFormer-S18. The head's 2048-wide hidden layer is part of the classifier,
  trained for the 527 labels; the pooled features are the network's
  representation, as EfficientAT's embedding is its pooled features before its
  MLP classifier, and the same stage as the ConvNeXt and FastViT vectors;
* FastViT: the final 1x1 MobileOne conv (2x the last width) + global average
  pool -- 1024 for FastViT-SA24.

:func:`embedding_dim` reads it from the model (timm's ``num_features``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from audio_dcls.checkpoint import Release, load_release
from audio_dcls.device import resolve_device
from audio_dcls.features import LogMel
from audio_dcls.models import prepare_for_inference

__all__ = [
    "ModelOutput",
    "PreparedRelease",
    "WaveformModel",
    "clip_embedding",
    "clip_scores",
    "embedding_dim",
    "logits_and_embeddings",
    "prepare_release",
    "round_significant",
    "top_tags",
]


class ModelOutput(NamedTuple):
    scores: torch.Tensor  # (B, C) class probabilities (sigmoid of the logits)
    embeddings: torch.Tensor  # (B, D) the vector the classifier reads


def logits_and_embeddings(model: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Log-mel (B, 1, n_mels, T) -> (logits (B, C), embeddings (B, D)) in one pass.

    The logits are the classifier applied to the embedding, which is what
    ``model(x)`` computes in eval mode (dropout is the only thing in between).
    """
    features = model.forward_features(x)  # (B, C', F', T')
    embeddings = model.forward_head(features, pre_logits=True)  # (B, D)
    logits = model.get_classifier()(embeddings)  # (B, C)
    return logits, embeddings


def embedding_dim(model: nn.Module) -> int:
    """Length of the embedding vector of a timm model (its ``num_features``)."""
    return int(model.num_features)


class WaveformModel(nn.Module):
    """Waveforms (B, samples) at the release's rate -> ModelOutput(scores (B, C), embeddings (B, D))."""

    def __init__(self, frontend: LogMel, model: nn.Module):
        super().__init__()
        self.frontend = frontend
        self.model = model

    def forward(self, waveforms: torch.Tensor) -> ModelOutput:
        x = self.frontend(waveforms)  # (B, 1, n_mels, T)
        logits, embeddings = logits_and_embeddings(self.model, x)  # (B, C), (B, D)
        return ModelOutput(torch.sigmoid(logits), embeddings)


@dataclass
class PreparedRelease:
    release: Release  # its .model is the prepared (folded) model
    model: WaveformModel
    device: torch.device
    num_parameters: int  # of the model as trained (DCLS weights + positions), the figure papers quote
    num_parameters_inference: int  # after folding/reparameterisation (dense kernels)

    @property
    def sample_rate(self) -> int:
        return self.release.frontend.sample_rate

    @property
    def labels(self) -> List[Tuple[str, str]]:
        return self.release.labels

    @property
    def embedding_dim(self) -> int:
        return embedding_dim(self.release.model)

    def infer(self, waveforms: torch.Tensor) -> ModelOutput:
        """Waveforms (B, samples) on any device -> outputs on the model's device."""
        with torch.inference_mode():
            return self.model(waveforms.to(self.device, non_blocking=True))

    def infer_logmel(self, x: torch.Tensor) -> ModelOutput:
        """Log-mel (B, 1, n_mels, T), e.g. from a feature store -> outputs (no front end)."""
        with torch.inference_mode():
            logits, embeddings = logits_and_embeddings(self.release.model, x.to(self.device, non_blocking=True).float())
            return ModelOutput(torch.sigmoid(logits), embeddings)


def prepare_release(
    folder: Union[str, Path],
    device: Union[str, torch.device] = "auto",
    release_loader: Callable[..., Release] = load_release,
) -> PreparedRelease:
    """Load a release folder (``release_loader(folder, device=...)``) and prepare it for inference."""
    device = resolve_device(device)
    release = release_loader(folder, device=device)
    trained = release.num_parameters
    model = prepare_for_inference(release.model)
    release.model = model
    frontend = LogMel(release.frontend).to(device).eval()
    return PreparedRelease(release, WaveformModel(frontend, model).eval(), device, trained, sum(p.numel() for p in model.parameters()))


def clip_scores(window_scores: np.ndarray) -> np.ndarray:
    """(W, C) window scores -> (C,) clip scores: each class's maximum over the windows."""
    return window_scores.max(axis=0)


def clip_embedding(window_embeddings: np.ndarray) -> np.ndarray:
    """(W, D) window embeddings -> (D,) clip embedding: their mean."""
    return window_embeddings.mean(axis=0, dtype=np.float64).astype(np.float32)


def round_significant(values, digits: int) -> List[float]:
    """Floats to ``digits`` significant digits, as the shortest floats that print them (for JSON)."""
    return [float(f"{v:.{digits}g}") for v in np.asarray(values, dtype=np.float64).ravel().tolist()]


def top_tags(
    scores: np.ndarray, labels: Sequence[Tuple[str, str]], top_k: int, threshold: Optional[float] = None, digits: Optional[int] = None
) -> List[dict]:
    """The ``top_k`` best classes of one score vector, best first (ties by index), optionally only
    those scoring at least ``threshold``: ``[{"index", "mid", "name", "score"}]``.

    ``digits``: report (and rank, and hold against ``threshold``) the scores rounded to that many
    significant digits, so that a reader who sorts the rounded scores finds the same tags in the
    same order (the service sends 5).
    """
    n = scores.shape[0]
    k = min(top_k, n)
    if digits is None:
        idx = np.argpartition(-scores, k - 1)[:k]
        idx = idx[np.lexsort((idx, -scores[idx]))]
        values = [float(scores[i]) for i in idx]
    else:
        kth = float(np.partition(scores, n - k)[n - k])  # the k-th best raw score
        # Rounding moves a score by at most half a unit of its last digit: only classes this close
        # below the k-th best can round up to tie with it.
        candidates = np.flatnonzero(scores >= kth - 4 * 10.0 ** -digits * abs(kth))
        rounded = round_significant(scores[candidates], digits)
        order = sorted(range(len(candidates)), key=lambda j: (-rounded[j], candidates[j]))[:k]
        idx = [candidates[j] for j in order]
        values = [rounded[j] for j in order]
    out = []
    for i, s in zip(idx, values):
        if threshold is not None and s < threshold:
            break
        mid, name = labels[i]
        out.append({"index": int(i), "mid": mid, "name": name, "score": s})
    return out
