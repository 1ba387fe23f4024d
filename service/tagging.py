"""From uploaded bytes to a tagging result: decode, plan windows, read scores.

The steps around the model, kept apart from the HTTP layer so each can be
reasoned about (and reused by the batch route) on its own:

* :func:`decode_upload` — any supported format to mono float32 at the model's
  rate, with decode failures mapped to HTTP errors (415 not audio, 400 broken,
  413 too long);
* :func:`plan_windows` — where each analysis window starts (the last one is
  zero-padded, a clip shorter than a window is padded to one window, as
  AudioSet's short clips are in training);
* :func:`build_result` — clip scores as the maximum over windows (the usual
  reading of a multi-label tagger over long audio: a sound is present if any
  window hears it), top tags, and per-window tags with their times.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from audio_dcls.audio import AudioDecodeError, AudioTooLong, UnsupportedAudioFormat, load_audio, num_windows, pad_or_trim

from .errors import ServiceError


@dataclass(frozen=True)
class TagParams:
    top_k: int = 10  # tags returned for the clip and for each window
    threshold: Optional[float] = None  # only tags scoring at least this; None: no floor
    window_s: float = 10.0  # analysis window (the models are trained on 10 s clips)
    hop_s: float = 5.0  # step between window starts


@dataclass
class WindowPlan:
    starts: List[int]  # first sample of each window
    window: int  # samples per window
    padded_length: int  # samples the waveform is padded to so that the last window is whole


def decode_upload(data: bytes, sample_rate: int, max_seconds: float, metrics=None) -> np.ndarray:
    """Bytes -> mono float32 at ``sample_rate``; raises ServiceError 400/413/415."""
    try:
        return load_audio(data, target_sr=sample_rate, mono=True, max_seconds=max_seconds)
    except AudioTooLong as e:
        _count(metrics, "too_long")
        raise ServiceError(413, "audio_too_long", e.reason) from None
    except UnsupportedAudioFormat as e:
        _count(metrics, "unsupported")
        raise ServiceError(415, "unsupported_media_type", e.reason) from None
    except AudioDecodeError as e:
        _count(metrics, "undecodable")
        raise ServiceError(400, "undecodable_audio", e.reason) from None
    except MemoryError:
        _count(metrics, "too_large")
        raise ServiceError(413, "audio_too_large", "the decoded audio does not fit in memory") from None


def _count(metrics, reason: str) -> None:
    if metrics is not None:
        metrics.decode_errors.labels(reason).inc()


def plan_windows(num_samples: int, sample_rate: int, window_s: float, hop_s: float, max_windows: int) -> WindowPlan:
    window = int(round(window_s * sample_rate))
    hop = int(round(hop_s * sample_rate))
    count = num_windows(num_samples, window, hop)
    if count > max_windows:
        raise ServiceError(
            413,
            "too_many_windows",
            f"{num_samples / sample_rate:.1f} s of audio cut every {hop_s:g} s gives {count} windows, more than the limit of {max_windows}; "
            "use a larger hop_s or a shorter file",
        )
    starts = [i * hop for i in range(count)]
    return WindowPlan(starts=starts, window=window, padded_length=starts[-1] + window)


def padded_waveform(audio: np.ndarray, plan: WindowPlan) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pad_or_trim(audio, plan.padded_length), dtype=np.float32))


def top_tags(scores: np.ndarray, labels: Sequence[Tuple[str, str]], top_k: int, threshold: Optional[float]) -> List[dict]:
    """The ``top_k`` best classes of one score vector, best first, optionally above ``threshold``."""
    k = min(top_k, scores.shape[0])
    idx = np.argpartition(-scores, k - 1)[:k]
    idx = idx[np.lexsort((idx, -scores[idx]))]  # by score, ties by index: a stable order
    out = []
    for i in idx:
        s = float(scores[i])
        if threshold is not None and s < threshold:
            break
        mid, name = labels[i]
        out.append({"index": int(i), "mid": mid, "name": name, "score": s})
    return out


def build_result(
    model_name: str,
    labels: Sequence[Tuple[str, str]],
    window_scores: np.ndarray,
    plan: WindowPlan,
    num_samples: int,
    sample_rate: int,
    params: TagParams,
    timing: dict,
) -> dict:
    duration = num_samples / sample_rate
    clip = window_scores.max(axis=0)  # (C,)
    windows = []
    for i, start in enumerate(plan.starts):
        t0 = start / sample_rate
        t1 = min((start + plan.window) / sample_rate, duration)
        windows.append({"index": i, "start_s": round(t0, 6), "end_s": round(t1, 6), "tags": top_tags(window_scores[i], labels, params.top_k, params.threshold)})
    return {
        "model": model_name,
        "duration_s": round(duration, 6),
        "sample_rate": sample_rate,
        "window_s": params.window_s,
        "hop_s": params.hop_s,
        "num_windows": len(plan.starts),
        "tags": top_tags(clip, labels, params.top_k, params.threshold),
        "scores": clip.tolist(),
        "windows": windows,
        "timing": timing,
    }


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3) if math.isfinite(seconds) else 0.0
