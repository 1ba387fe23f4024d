"""From uploaded bytes to a tagging result: decode, plan windows, read scores.

The steps around the model, kept apart from the HTTP layer so each can be
reasoned about (and reused by the batch route) on its own:

* :func:`decode_upload` — any supported format to mono float32 at the model's
  rate, with the decoder's warnings (a file cut short is tagged, and says so),
  and decode failures mapped to HTTP errors (415 not audio, 400 broken, 413
  too long);
* :func:`plan_windows` — where each analysis window starts (the last one is
  zero-padded, a clip shorter than a window is padded to one window, as
  AudioSet's short clips are in training);
* :func:`build_result` — clip scores as the maximum over windows (the usual
  reading of a multi-label tagger over long audio: a sound is present if any
  window hears it), top tags, and per-window tags with their times; scores
  to 5 significant digits, the large parts (``scores``, ``windows``) only
  when ``include`` asks for them;
* :class:`UploadTagger` — the three around the model's batching worker, for
  one file: decoding in a thread (at most ``decode_threads`` at once), the
  job on the worker's queue, the result with its timing; 504 once
  REQUEST_TIMEOUT_S have passed, 503 when a drain runs out of time (the
  windows not yet run are dropped either way).
"""
from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, FrozenSet, List, Optional, Sequence, Tuple

import anyio
import numpy as np
import torch

from audio_dcls.audio import AudioDecodeError, AudioTooLong, UnsupportedAudioFormat, decode_audio, num_windows, pad_or_trim

from .batching import QueueFull, TagJob, WorkerStopped
from .drain import RETRY_AFTER_S, Drain
from .errors import ServiceError, human_size
from .incoming import IncomingTicket
from .metrics import ServiceMetrics
from .settings import Settings

if TYPE_CHECKING:
    from .registry import LoadedModel


# What a result may carry besides the clip's top tags (``include=``). A new part of the result is one
# more name here and one more branch in build_result.
INCLUDE_CHOICES = ("scores", "windows")
DEFAULT_INCLUDE = frozenset(INCLUDE_CHOICES)  # today's fields: a client that asks for nothing gets them all
SIGNIFICANT_DIGITS = 5  # of every score sent: a float32 sigmoid carries about 7, a reader needs 3


@dataclass(frozen=True)
class TagParams:
    top_k: int = 10  # tags returned for the clip
    threshold: Optional[float] = None  # only tags scoring at least this; None: no floor
    window_s: float = 10.0  # analysis window (the models are trained on 10 s clips)
    hop_s: float = 5.0  # step between window starts
    window_top_k: int = 3  # tags listed for each window
    include: FrozenSet[str] = DEFAULT_INCLUDE  # parts of the result besides the clip's tags (INCLUDE_CHOICES)


def parse_include(value: Optional[str]) -> FrozenSet[str]:
    """``"scores,windows"`` -> the parts named; None -> DEFAULT_INCLUDE; ``"none"`` -> the tags alone."""
    if value is None:
        return DEFAULT_INCLUDE
    names = {v.strip().lower() for v in value.split(",") if v.strip()}
    if names == {"none"}:
        return frozenset()
    unknown = sorted(names - set(INCLUDE_CHOICES))
    if unknown:
        raise ServiceError(422, "invalid_parameter", f"include: unknown part(s) {', '.join(map(repr, unknown))}; choose from {', '.join(INCLUDE_CHOICES)}, or 'none'")
    return frozenset(names)


def rounded(values) -> List[float]:
    """Scores to SIGNIFICANT_DIGITS significant digits, as the shortest floats JSON can carry."""
    return [float(f"{v:.{SIGNIFICANT_DIGITS}g}") for v in np.asarray(values, dtype=np.float64).tolist()]


@dataclass
class WindowPlan:
    starts: List[int]  # first sample of each window
    window: int  # samples per window
    padded_length: int  # samples the waveform is padded to so that the last window is whole


def decode_upload(data: bytes, sample_rate: int, max_seconds: float, metrics=None) -> Tuple[np.ndarray, List[str]]:
    """Bytes -> (mono float32 at ``sample_rate``, the decoder's warnings); raises ServiceError 400/413/415."""
    try:
        decoded = decode_audio(data, target_sr=sample_rate, mono=True, max_seconds=max_seconds)
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
        raise ServiceError(413, "audio_too_large", "the decoded audio does not fit in memory") from None
    if decoded.warnings and metrics is not None:
        metrics.decoded_with_warnings(decoded.warnings)
    return decoded.samples, list(decoded.warnings)


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
    """The ``top_k`` best classes of one score vector, best first, optionally at or above ``threshold``.

    Ranked by the scores as sent (SIGNIFICANT_DIGITS), ties by index, so a client sorting the
    response's ``scores`` finds the same tags in the same order.
    """
    n = scores.shape[0]
    k = min(top_k, n)
    kth = float(np.partition(scores, n - k)[n - k])  # the k-th best raw score
    # Rounding moves a score by at most half a unit of its 5th digit (5e-5 relative): only classes this
    # close below the k-th best can round up to tie with it.
    candidates = np.flatnonzero(scores >= kth - 2e-4 * abs(kth))
    values = rounded(scores[candidates])
    order = sorted(range(len(candidates)), key=lambda j: (-values[j], candidates[j]))[:k]
    out = []
    for j in order:
        if threshold is not None and values[j] < threshold:
            break
        i = int(candidates[j])
        mid, name = labels[i]
        out.append({"index": i, "mid": mid, "name": name, "score": values[j]})
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
    warnings: Sequence[str] = (),
) -> dict:
    """The result of one file; ``params.include`` decides which of the large parts it carries."""
    duration = num_samples / sample_rate
    clip = window_scores.max(axis=0)  # (C,)
    tags = top_tags(clip, labels, params.top_k, params.threshold)
    result = {
        "model": model_name,
        "duration_s": round(duration, 6),
        "sample_rate": sample_rate,
        "window_s": params.window_s,
        "hop_s": params.hop_s,
        "num_windows": len(plan.starts),
        "tags": tags,
    }
    if "scores" in params.include:
        result["scores"] = rounded(clip)
    if "windows" in params.include:
        result["windows"] = window_entries(window_scores, plan, duration, sample_rate, labels, params, [t["index"] for t in tags])
    result["warnings"] = list(warnings)
    result["timing"] = timing
    return result


def window_entries(window_scores, plan: WindowPlan, duration: float, sample_rate: int, labels, params: TagParams, clip_tags: Sequence[int]) -> List[dict]:
    """Per window: its time span, its own ``window_top_k`` tags, and its score for each of the clip's
    tags (``tag_scores``, in the order of the result's ``tags``: a class x time map needs no more)."""
    out = []
    for i, start in enumerate(plan.starts):
        t0 = start / sample_rate
        t1 = min((start + plan.window) / sample_rate, duration)
        out.append({
            "index": i,
            "start_s": round(t0, 6),
            "end_s": round(t1, 6),
            "tags": top_tags(window_scores[i], labels, params.window_top_k, params.threshold),
            "tag_scores": rounded(window_scores[i, list(clip_tags)]),
        })
    return out


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3) if math.isfinite(seconds) else 0.0


class UploadTagger:
    """Tags one uploaded file with one loaded model; the event loop only awaits."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics, drain: Optional[Drain] = None):
        self.settings = settings
        self.metrics = metrics
        self.drain = drain or Drain(settings.drain_seconds)
        self.decode_limiter = anyio.CapacityLimiter(settings.decode_threads)

    def _prepare(self, data: bytes, sample_rate: int, params: TagParams):
        """Decode, check the duration, plan the windows, pad: CPU work for a thread."""
        s = self.settings
        audio, warnings = decode_upload(data, sample_rate, s.max_audio_seconds, self.metrics)
        seconds = audio.shape[0] / sample_rate
        if seconds > s.max_audio_seconds:  # formats without a length in their header
            self.metrics.decode_errors.labels("too_long").inc()
            raise ServiceError(413, "audio_too_long", f"the audio lasts {human_duration(seconds)}, longer than the {human_duration(s.max_audio_seconds)} limit (MAX_AUDIO_SECONDS)")
        plan = plan_windows(audio.shape[0], sample_rate, params.window_s, params.hop_s, s.max_windows)
        return audio.shape[0], plan, padded_waveform(audio, plan), warnings

    async def tag(self, loaded: "LoadedModel", data: bytes, params: TagParams, ticket: Optional[IncomingTicket] = None) -> dict:
        """The result dict of POST /v1/tag for ``data`` (without the file name); raises ServiceError."""
        s, metrics = self.settings, self.metrics
        t_start = time.perf_counter()
        deadline = t_start + s.request_timeout_s
        if len(data) > s.max_upload_bytes:
            raise ServiceError(413, "payload_too_large", f"the file ({human_size(len(data))}, {len(data)} bytes) exceeds the {human_size(s.max_upload_bytes)} limit (MAX_UPLOAD_BYTES={s.max_upload_bytes})")
        sr = loaded.sample_rate
        num_samples, plan, waveform, warnings = await anyio.to_thread.run_sync(self._prepare, data, sr, params, limiter=self.decode_limiter)
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
        await self._wait(loaded, job, deadline)
        t_done = time.perf_counter()
        metrics.audio_seconds.labels(loaded.name).inc(num_samples / sr)
        timing = {
            "decode_ms": ms(t_decoded - t_start),
            "queue_ms": ms((job.first_batch_at or t_done) - job.submitted_at),
            "inference_ms": ms(job.compute_s),
            "total_ms": ms(t_done - t_start),
        }
        return build_result(loaded.name, loaded.release.labels, job.scores, plan, num_samples, sr, params, timing, warnings)

    async def _wait(self, loaded: "LoadedModel", job: TagJob, deadline: float) -> None:
        """Until the job's windows are all scored; 504 at ``deadline``, 503 once a drain has run out of
        time. Either way (and when the client goes away) the windows not yet run are dropped."""
        waiter = asyncio.wrap_future(job.future)
        expired = asyncio.ensure_future(self.drain.expired().wait())
        try:
            done, _ = await asyncio.wait((waiter, expired), timeout=max(0.0, deadline - time.perf_counter()), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            job.future.cancel()  # the client went away
            raise
        finally:
            expired.cancel()
        if waiter in done:
            try:
                waiter.result()
            except WorkerStopped as e:
                raise ServiceError(503, "not_ready", str(e), {"Retry-After": "5"}) from None
            return
        job.future.cancel()  # the worker drops what is left of the job
        left = f"{job.num_windows - job.done_windows} of its {job.num_windows} windows were not scored and have been dropped"
        if expired in done:
            raise ServiceError(503, "shutting_down", f"this instance is shutting down and DRAIN_SECONDS={self.drain.seconds:g} have passed; {left}; retry", {"Retry-After": str(RETRY_AFTER_S)})
        self.metrics.timeouts.labels(loaded.name).inc()
        raise ServiceError(504, "timeout", f"the result was not ready within REQUEST_TIMEOUT_S={self.settings.request_timeout_s:g} s; {left}")


def human_duration(seconds: float) -> str:
    """75.5 -> '1:15.5 (75.5 s)', 12.5 -> '12.5 s'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}:{rest:04.1f} ({seconds:.1f} s)"
