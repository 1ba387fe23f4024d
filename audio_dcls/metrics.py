"""Multi-label tagging metrics as AudioSet papers report them.

* mAP: mean over classes of sklearn's ``average_precision_score`` (the
  step-wise area under the precision-recall curve), taken over the classes
  with at least one positive. A class without positives has no defined AP; it
  is left out and counted, never averaged in as 0 (an AudioSet eval copy with
  missing clips may lack a few rare classes).
* mAUC: mean per-class ROC AUC over classes with at least one positive and one
  negative.
* d′ = √2 · Φ⁻¹(mAUC), the convention of PANNs and AST; the paper's code also
  reports the mean of the per-class d′, which differs because Φ⁻¹ is not linear.
  AUC is clipped to [1e-6, 1 − 1e-6] before Φ⁻¹ so that a perfectly ranked
  class gives a large finite d′ (6.72) instead of infinity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np

AUC_CLIP = 1e-6  # d′ of a perfectly separated class: √2·Φ⁻¹(1 − 1e-6) ≈ 6.72


def d_prime(auc):
    """√2 · Φ⁻¹(auc), elementwise; AUC clipped to [AUC_CLIP, 1 − AUC_CLIP]."""
    from scipy.stats import norm

    a = np.clip(np.asarray(auc, dtype=np.float64), AUC_CLIP, 1.0 - AUC_CLIP)
    return math.sqrt(2.0) * norm.ppf(a)


def _check(targets: np.ndarray, scores: np.ndarray):
    targets = np.asarray(targets)
    scores = np.asarray(scores, dtype=np.float64)
    if targets.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"targets and scores must both be (clips, classes); got {targets.shape} and {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"scores hold {int((~np.isfinite(scores)).sum())} non-finite values")
    return (targets > 0.5).astype(np.int8), scores


def per_class_average_precision(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(C,) sklearn average precision per class; NaN where a class has no positive."""
    from sklearn.metrics import average_precision_score

    y, s = _check(targets, scores)
    ap = np.full(y.shape[1], np.nan)
    for c in np.flatnonzero(y.sum(0) > 0):
        ap[c] = average_precision_score(y[:, c], s[:, c])
    return ap


def per_class_roc_auc(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(C,) sklearn ROC AUC per class; NaN where a class lacks positives or negatives."""
    from sklearn.metrics import roc_auc_score

    y, s = _check(targets, scores)
    pos = y.sum(0)
    auc = np.full(y.shape[1], np.nan)
    for c in np.flatnonzero((pos > 0) & (pos < y.shape[0])):
        auc[c] = roc_auc_score(y[:, c], s[:, c])
    return auc


@dataclass
class TaggingMetrics:
    mAP: float  # mean AP over the `classes_scored_ap` classes with >= 1 positive
    mAUC: float  # mean ROC AUC over the `classes_scored_auc` classes with positives and negatives
    d_prime: float  # √2·Φ⁻¹(mAUC) (PANNs/AST convention)
    mean_class_d_prime: float  # mean over classes of √2·Φ⁻¹(AUC_c) (the paper's code)
    num_clips: int
    num_classes: int
    classes_scored_ap: int
    classes_scored_auc: int
    positives: np.ndarray = field(repr=False)  # (C,) positives per class
    ap: np.ndarray = field(repr=False)  # (C,) NaN where not scored
    auc: np.ndarray = field(repr=False)  # (C,) NaN where not scored

    def summary(self) -> Dict:
        """JSON-ready scalars."""
        return {
            "mAP": self.mAP,
            "mAUC": self.mAUC,
            "d_prime": self.d_prime,
            "mean_class_d_prime": self.mean_class_d_prime,
            "num_clips": self.num_clips,
            "num_classes": self.num_classes,
            "classes_scored_ap": self.classes_scored_ap,
            "classes_scored_auc": self.classes_scored_auc,
            "classes_without_positives": self.num_classes - self.classes_scored_ap,
        }

    def describe(self) -> str:
        return (
            f"mAP {self.mAP:.4f} over {self.classes_scored_ap}/{self.num_classes} classes with positives, "
            f"mAUC {self.mAUC:.4f} ({self.classes_scored_auc} classes), d' {self.d_prime:.3f} "
            f"(mean per-class d' {self.mean_class_d_prime:.3f}), {self.num_clips} clips"
        )


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def tagging_metrics(targets: np.ndarray, scores: np.ndarray) -> TaggingMetrics:
    """All metrics for (N, C) multi-hot targets and (N, C) scores (probabilities or logits)."""
    y, _ = _check(targets, scores)
    if y.shape[0] == 0:
        raise ValueError("no clips to score")
    ap = per_class_average_precision(targets, scores)
    auc = per_class_roc_auc(targets, scores)
    scored_ap = int((~np.isnan(ap)).sum())
    if scored_ap == 0:
        raise ValueError("no class has a positive clip: mAP is undefined")
    mauc = _nanmean(auc)
    scored_auc = int((~np.isnan(auc)).sum())
    return TaggingMetrics(
        mAP=_nanmean(ap),
        mAUC=mauc,
        d_prime=float(d_prime(mauc)) if scored_auc else float("nan"),
        mean_class_d_prime=_nanmean(d_prime(auc[~np.isnan(auc)])) if scored_auc else float("nan"),
        num_clips=int(y.shape[0]),
        num_classes=int(y.shape[1]),
        classes_scored_ap=scored_ap,
        classes_scored_auc=scored_auc,
        positives=y.sum(0).astype(np.int64),
        ap=ap,
        auc=auc,
    )


__all__: List[str] = [
    "AUC_CLIP",
    "TaggingMetrics",
    "d_prime",
    "per_class_average_precision",
    "per_class_roc_auc",
    "tagging_metrics",
]
