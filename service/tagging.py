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
  window hears it), top tags, and per-window tags with their times;
* :class:`UploadTagger` — the three around the model's batching worker, for
  one file: decoding in a thread (at most ``decode_threads`` at once), the
  job on the worker's queue, the result with its timing.
"""
from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import anyio
import numpy as np
import torch

from audio_dcls.audio import AudioDecodeError, AudioTooLong, UnsupportedAudioFormat, load_audio, num_windows, pad_or_trim

from .batching import QueueFull, TagJob, WorkerStopped
from .errors import ServiceError
from .incoming import IncomingTicket
from .metrics import ServiceMetrics
from .settings import Settings

if TYPE_CHECKING:
    from .registry import LoadedModel


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


class UploadTagger:
    """Tags one uploaded file with one loaded model; the event loop only awaits."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics):
        self.settings = settings
        self.metrics = metrics
        self.decode_limiter = anyio.CapacityLimiter(settings.decode_threads)

    def _prepare(self, data: bytes, sample_rate: int, params: TagParams):
        """Decode, check the duration, plan the windows, pad: CPU work for a thread."""
        s = self.settings
        audio = decode_upload(data, sample_rate, s.max_audio_seconds, self.metrics)
        if audio.shape[0] / sample_rate > s.max_audio_seconds:  # formats without a length in their header
            self.metrics.decode_errors.labels("too_long").inc()
            raise ServiceError(413, "audio_too_long", f"the audio lasts {audio.shape[0] / sample_rate:.1f} s, longer than the {s.max_audio_seconds:g} s limit")
        plan = plan_windows(audio.shape[0], sample_rate, params.window_s, params.hop_s, s.max_windows)
        return audio.shape[0], plan, padded_waveform(audio, plan)

    async def tag(self, loaded: "LoadedModel", data: bytes, params: TagParams, ticket: Optional[IncomingTicket] = None) -> dict:
        """The result dict of POST /v1/tag for ``data`` (without the file name); raises ServiceError."""
        s, metrics = self.settings, self.metrics
        t_start = time.perf_counter()
        if len(data) > s.max_upload_bytes:
            metrics.decode_errors.labels("too_large").inc()
            raise ServiceError(413, "payload_too_large", f"the file ({len(data)} bytes) exceeds the limit of {s.max_upload_bytes} bytes (MAX_UPLOAD_BYTES)")
        sr = loaded.sample_rate
        num_samples, plan, waveform = await anyio.to_thread.run_sync(self._prepare, data, sr, params, limiter=self.decode_limiter)
        t_decoded = time.perf_counter()
        job = TagJob(waveform=waveform, starts=plan.starts, window=plan.window)
        try:
            future = loaded.worker.submit(job)
        except QueueFull as e:
            metrics.rejected.labels(loaded.name).inc()
            raise ServiceError(503, "queue_full", f"model {loaded.name} has {s.queue_size} requests waiting; retry after {e.retry_after_s} s", {"Retry-After": str(e.retry_after_s)}) from None
        except WorkerStopped as e:
            raise ServiceError(503, "not_ready", str(e), {"Retry-After": "5"}) from None
        if ticket is not None:
            # No longer "on its way": released only once queued, so a worker that sees no request on its
            # way finds this one in its queue (service.batching relies on the order).
            ticket.release()
        try:
            await asyncio.wrap_future(future)
        except WorkerStopped as e:
            raise ServiceError(503, "not_ready", str(e), {"Retry-After": "5"}) from None
        except asyncio.CancelledError:
            future.cancel()  # the client went away: drop the windows not yet run
            raise
        t_done = time.perf_counter()
        metrics.audio_seconds.labels(loaded.name).inc(num_samples / sr)
        timing = {
            "decode_ms": ms(t_decoded - t_start),
            "queue_ms": ms((job.first_batch_at or t_done) - job.submitted_at),
            "inference_ms": ms(job.compute_s),
            "total_ms": ms(t_done - t_start),
        }
        return build_result(loaded.name, loaded.release.labels, job.scores, plan, num_samples, sr, params, timing)
