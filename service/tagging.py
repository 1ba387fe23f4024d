"""From uploaded bytes to a tagging or embedding result: decode, plan windows, read the outputs.

The steps around the model, kept apart from the HTTP layer so each can be
reasoned about (and reused by the batch route) on its own:

* :func:`decode_upload` — any supported format to mono float32 at the model's
  rate, with decode failures mapped to HTTP errors (415 not audio, 400 broken,
  413 too long);
* :func:`plan_upload_windows` — where each analysis window lies, by the rule
  of :func:`audio_dcls.windowing.plan_windows` that the Python Tagger follows
  too (the last window ends at the end of the audio; a clip shorter than a
  window is padded to one window, as AudioSet's short clips are in training),
  with MAX_WINDOWS enforced (413);
* :func:`build_result` — clip scores as the maximum over windows
  (:func:`audio_dcls.inference.clip_scores`: a sound is present if any window
  hears it), top tags, and per-window tags with their times;
  :func:`build_embedding_result` — the clip embedding as the mean over windows
  (:func:`audio_dcls.inference.clip_embedding`), per-window ones on request;
* :class:`UploadTagger` — the steps around the model's batching worker, for
  one file: decoding in a thread (at most ``decode_threads`` at once), the
  job on the worker's queue (one forward gives scores and embeddings), the
  result with its timing.
"""
from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence, Tuple

import anyio
import numpy as np

from audio_dcls.audio import AudioDecodeError, AudioTooLong, UnsupportedAudioFormat, load_audio
from audio_dcls.inference import clip_embedding, clip_scores, top_tags
from audio_dcls.windowing import DEFAULT_WINDOW_S, TooManyWindows, WindowPlan, default_hop_s, padded_waveform, plan_windows

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
    window_s: float = DEFAULT_WINDOW_S  # analysis window (the models are trained on 10 s clips)
    hop_s: float = default_hop_s(DEFAULT_WINDOW_S)  # step between window starts


@dataclass(frozen=True)
class EmbedParams:
    window_s: float = DEFAULT_WINDOW_S  # analysis window
    hop_s: float = default_hop_s(DEFAULT_WINDOW_S)  # step between window starts
    per_window: bool = False  # also return each window's embedding


@dataclass
class WindowRun:
    """One file through the worker: its windows and the job that holds their outputs."""

    plan: WindowPlan
    job: TagJob  # .scores (W, C) and .embeddings (W, D), filled
    timing: dict


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


def plan_upload_windows(num_samples: int, sample_rate: int, window_s: float, hop_s: float, max_windows: int) -> WindowPlan:
    try:
        return plan_windows(num_samples, sample_rate, window_s, hop_s, max_windows)
    except TooManyWindows as e:
        raise ServiceError(413, "too_many_windows", f"{e}; use a larger hop_s or a shorter file") from None


def _result_head(model_name: str, plan: WindowPlan, window_s: float, hop_s: float) -> dict:
    """The fields every per-file result starts with: the model, the audio and its windows."""
    return {
        "model": model_name,
        "duration_s": round(plan.num_samples / plan.sample_rate, 6),
        "sample_rate": plan.sample_rate,
        "window_s": window_s,
        "hop_s": hop_s,
        "num_windows": plan.num_windows,
    }


def _window_entry(plan: WindowPlan, i: int) -> dict:
    t0, t1 = plan.bounds_s(i)
    return {"index": i, "start_s": round(t0, 6), "end_s": round(t1, 6)}


def build_result(
    model_name: str,
    labels: Sequence[Tuple[str, str]],
    window_scores: np.ndarray,
    plan: WindowPlan,
    params: TagParams,
    timing: dict,
) -> dict:
    clip = clip_scores(window_scores)  # (C,)
    windows = [dict(_window_entry(plan, i), tags=top_tags(window_scores[i], labels, params.top_k, params.threshold)) for i in range(plan.num_windows)]
    return {
        **_result_head(model_name, plan, params.window_s, params.hop_s),
        "tags": top_tags(clip, labels, params.top_k, params.threshold),
        "scores": clip.tolist(),
        "windows": windows,
        "timing": timing,
    }


def build_embedding_result(model_name: str, window_embeddings: np.ndarray, plan: WindowPlan, params: EmbedParams, timing: dict) -> dict:
    windows = []
    for i in range(plan.num_windows):
        entry = _window_entry(plan, i)
        if params.per_window:
            entry["embedding"] = window_embeddings[i].tolist()
        windows.append(entry)
    return {
        **_result_head(model_name, plan, params.window_s, params.hop_s),
        "embedding_dim": int(window_embeddings.shape[1]),
        "embedding": clip_embedding(window_embeddings).tolist(),
        "windows": windows,
        "timing": timing,
    }


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3) if math.isfinite(seconds) else 0.0


class UploadTagger:
    """Tags or embeds one uploaded file with one loaded model; the event loop only awaits."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics):
        self.settings = settings
        self.metrics = metrics
        self.decode_limiter = anyio.CapacityLimiter(settings.decode_threads)

    def _prepare(self, data: bytes, sample_rate: int, window_s: float, hop_s: float):
        """Decode, check the duration, plan the windows, pad: CPU work for a thread."""
        s = self.settings
        audio = decode_upload(data, sample_rate, s.max_audio_seconds, self.metrics)
        if audio.shape[0] / sample_rate > s.max_audio_seconds:  # formats without a length in their header
            self.metrics.decode_errors.labels("too_long").inc()
            raise ServiceError(413, "audio_too_long", f"the audio lasts {audio.shape[0] / sample_rate:.1f} s, longer than the {s.max_audio_seconds:g} s limit")
        plan = plan_upload_windows(audio.shape[0], sample_rate, window_s, hop_s, s.max_windows)
        return plan, padded_waveform(audio, plan)

    async def run(self, loaded: "LoadedModel", data: bytes, window_s: float, hop_s: float, ticket: Optional[IncomingTicket] = None) -> WindowRun:
        """Decode ``data``, run its windows through the model's worker; raises ServiceError."""
        s, metrics = self.settings, self.metrics
        t_start = time.perf_counter()
        if len(data) > s.max_upload_bytes:
            metrics.decode_errors.labels("too_large").inc()
            raise ServiceError(413, "payload_too_large", f"the file ({len(data)} bytes) exceeds the limit of {s.max_upload_bytes} bytes (MAX_UPLOAD_BYTES)")
        sr = loaded.sample_rate
        plan, waveform = await anyio.to_thread.run_sync(self._prepare, data, sr, window_s, hop_s, limiter=self.decode_limiter)
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
        metrics.audio_seconds.labels(loaded.name).inc(plan.num_samples / sr)
        timing = {
            "decode_ms": ms(t_decoded - t_start),
            "queue_ms": ms((job.first_batch_at or t_done) - job.submitted_at),
            "inference_ms": ms(job.compute_s),
            "total_ms": ms(t_done - t_start),
        }
        return WindowRun(plan, job, timing)

    async def tag(self, loaded: "LoadedModel", data: bytes, params: TagParams, ticket: Optional[IncomingTicket] = None) -> dict:
        """The result dict of POST /v1/tag for ``data`` (without the file name); raises ServiceError."""
        r = await self.run(loaded, data, params.window_s, params.hop_s, ticket)
        return build_result(loaded.name, loaded.release.labels, r.job.scores, r.plan, params, r.timing)

    async def embed(self, loaded: "LoadedModel", data: bytes, params: EmbedParams, ticket: Optional[IncomingTicket] = None) -> dict:
        """The result dict of POST /v1/embed for ``data`` (without the file name); raises ServiceError."""
        r = await self.run(loaded, data, params.window_s, params.hop_s, ticket)
        return build_embedding_result(loaded.name, r.job.embeddings, r.plan, params, r.timing)
