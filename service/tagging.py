"""From uploaded bytes to a tagging or embedding result: decode, plan windows, read the outputs.

The steps around the model, kept apart from the HTTP layer so each can be
reasoned about (and reused by the batch route) on its own:

* :func:`decode_upload` — any supported format to mono float32 at the model's
  rate, with the decoder's warnings (a file cut short is tagged, and says so),
  and decode failures mapped to HTTP errors (415 not audio, 400 broken, 413
  too long);
* :func:`plan_upload_windows` — where each analysis window lies, by the rule
  of :func:`audio_dcls.windowing.plan_windows` that the Python Tagger follows
  too (the last window ends at the end of the audio; a clip shorter than a
  window is padded to one window, as AudioSet's short clips are in training),
  with MAX_WINDOWS enforced (413);
* :func:`build_result` — clip scores as the maximum over windows
  (:func:`audio_dcls.inference.clip_scores`: a sound is present if any window
  hears it), top tags, and per-window tags with their times; scores to 5
  significant digits, the large parts (``scores``, ``windows``, ``embedding``)
  only when ``include`` asks for them; :func:`build_embedding_result` — the clip embedding as the mean over windows
  (:func:`audio_dcls.inference.clip_embedding`), per-window ones on request;
* :class:`UploadTagger` — the steps around the model's batching worker, for
  one file: decoding in a thread (at most ``decode_threads`` at once), the
  job on the worker's queue (one forward gives scores and embeddings), the
  result with its timing; 504 once REQUEST_TIMEOUT_S have passed, 503 when a
  drain runs out of time (the windows not yet run are dropped either way).
"""
from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, FrozenSet, List, Optional, Sequence, Tuple

import anyio
import numpy as np

from audio_dcls.audio import AudioDecodeError, AudioTooLong, UnsupportedAudioFormat, decode_audio
from audio_dcls.inference import clip_embedding, clip_scores, round_significant, top_tags
from audio_dcls.windowing import DEFAULT_WINDOW_S, TooManyWindows, WindowPlan, default_hop_s, padded_waveform, plan_windows

from .batching import QueueFull, TagJob, WorkerStopped
from .drain import RETRY_AFTER_S, Drain
from .errors import ServiceError, human_size
from .incoming import IncomingTicket
from .metrics import ServiceMetrics
from .settings import Settings

if TYPE_CHECKING:
    from .registry import LoadedModel


# What a tagging result may carry besides the clip's top tags (``include=``). A new part of the result is
# one more name here and one more branch in build_result.
INCLUDE_CHOICES = ("scores", "windows", "embedding")
DEFAULT_INCLUDE = frozenset({"scores", "windows"})  # the fields results had before `include` existed
SIGNIFICANT_DIGITS = 5  # of every score sent: a float32 sigmoid carries about 7, a reader needs 3


@dataclass(frozen=True)
class TagParams:
    top_k: int = 10  # tags returned for the clip
    threshold: Optional[float] = None  # only tags scoring at least this; None: no floor
    window_s: float = DEFAULT_WINDOW_S  # analysis window (the models are trained on 10 s clips)
    hop_s: float = default_hop_s(DEFAULT_WINDOW_S)  # step between window starts
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
    """Scores as sent: SIGNIFICANT_DIGITS significant digits."""
    return round_significant(values, SIGNIFICANT_DIGITS)


def sent_tags(scores: np.ndarray, labels: Sequence[Tuple[str, str]], top_k: int, threshold: Optional[float]) -> List[dict]:
    """Top tags ranked by the scores as sent, so a client sorting ``scores`` finds the same ones."""
    return top_tags(scores, labels, top_k, threshold, digits=SIGNIFICANT_DIGITS)


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
    warnings: List[str]  # the decoder's, about this file


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
    run: WindowRun,
    params: TagParams,
) -> dict:
    """The result of one file; ``params.include`` decides which of the large parts it carries."""
    window_scores, plan = run.job.scores, run.plan
    clip = clip_scores(window_scores)  # (C,)
    tags = sent_tags(clip, labels, params.top_k, params.threshold)
    result = {**_result_head(model_name, plan, params.window_s, params.hop_s), "tags": tags}
    if "scores" in params.include:
        result["scores"] = rounded(clip)
    if "windows" in params.include:
        columns = [t["index"] for t in tags]
        result["windows"] = [
            dict(
                _window_entry(plan, i),
                tags=sent_tags(window_scores[i], labels, params.window_top_k, params.threshold),
                tag_scores=rounded(window_scores[i, columns]),  # a class x time map of the clip's top classes needs no more
            )
            for i in range(plan.num_windows)
        ]
    if "embedding" in params.include:  # what POST /v1/embed returns for the file
        result["embedding_dim"] = int(run.job.embeddings.shape[1])
        result["embedding"] = clip_embedding(run.job.embeddings).tolist()
    result["warnings"] = list(run.warnings)
    result["timing"] = run.timing
    return result


def build_embedding_result(model_name: str, window_embeddings: np.ndarray, plan: WindowPlan, params: EmbedParams, timing: dict, warnings: Sequence[str] = ()) -> dict:
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
        "warnings": list(warnings),
        "timing": timing,
    }


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3) if math.isfinite(seconds) else 0.0


class UploadTagger:
    """Tags or embeds one uploaded file with one loaded model; the event loop only awaits."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics, drain: Optional[Drain] = None):
        self.settings = settings
        self.metrics = metrics
        self.drain = drain or Drain(settings.drain_seconds)
        self.decode_limiter = anyio.CapacityLimiter(settings.decode_threads)

    def _prepare(self, data: bytes, sample_rate: int, window_s: float, hop_s: float):
        """Decode, check the duration, plan the windows, pad: CPU work for a thread."""
        s = self.settings
        audio, warnings = decode_upload(data, sample_rate, s.max_audio_seconds, self.metrics)
        seconds = audio.shape[0] / sample_rate
        if seconds > s.max_audio_seconds:  # formats without a length in their header
            self.metrics.decode_errors.labels("too_long").inc()
            raise ServiceError(413, "audio_too_long", f"the audio lasts {human_duration(seconds)}, longer than the {human_duration(s.max_audio_seconds)} limit (MAX_AUDIO_SECONDS)")
        plan = plan_upload_windows(audio.shape[0], sample_rate, window_s, hop_s, s.max_windows)
        return plan, padded_waveform(audio, plan), warnings

    async def run(self, loaded: "LoadedModel", data: bytes, window_s: float, hop_s: float, ticket: Optional[IncomingTicket] = None) -> WindowRun:
        """Decode ``data``, run its windows through the model's worker; raises ServiceError."""
        s, metrics = self.settings, self.metrics
        t_start = time.perf_counter()
        deadline = t_start + s.request_timeout_s
        if len(data) > s.max_upload_bytes:
            raise ServiceError(413, "payload_too_large", f"the file ({human_size(len(data))}, {len(data)} bytes) exceeds the {human_size(s.max_upload_bytes)} limit (MAX_UPLOAD_BYTES={s.max_upload_bytes})")
        sr = loaded.sample_rate
        plan, waveform, warnings = await anyio.to_thread.run_sync(self._prepare, data, sr, window_s, hop_s, limiter=self.decode_limiter)
        t_decoded = time.perf_counter()
        job = TagJob(waveform=waveform, starts=plan.starts, window=plan.window)
        try:
            loaded.worker.submit(job)
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
        metrics.audio_seconds.labels(loaded.name).inc(plan.num_samples / sr)
        timing = {
            "decode_ms": ms(t_decoded - t_start),
            "queue_ms": ms((job.first_batch_at or t_done) - job.submitted_at),
            "inference_ms": ms(job.compute_s),
            "total_ms": ms(t_done - t_start),
        }
        return WindowRun(plan, job, timing, warnings)

    async def _wait(self, loaded: "LoadedModel", job: TagJob, deadline: float) -> None:
        """Until the job's windows are all run; 504 at ``deadline``, 503 once a drain has run out of
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
        left = f"{job.num_windows - job.done_windows} of its {job.num_windows} windows were not run and have been dropped"
        if expired in done:
            raise ServiceError(503, "shutting_down", f"this instance is shutting down and DRAIN_SECONDS={self.drain.seconds:g} have passed; {left}; retry", {"Retry-After": str(RETRY_AFTER_S)})
        self.metrics.timeouts.labels(loaded.name).inc()
        raise ServiceError(504, "timeout", f"the result was not ready within REQUEST_TIMEOUT_S={self.settings.request_timeout_s:g} s; {left}")

    async def tag(self, loaded: "LoadedModel", data: bytes, params: TagParams, ticket: Optional[IncomingTicket] = None) -> dict:
        """The result dict of POST /v1/tag for ``data`` (without the file name); raises ServiceError."""
        r = await self.run(loaded, data, params.window_s, params.hop_s, ticket)
        return build_result(loaded.name, loaded.release.labels, r, params)

    async def embed(self, loaded: "LoadedModel", data: bytes, params: EmbedParams, ticket: Optional[IncomingTicket] = None) -> dict:
        """The result dict of POST /v1/embed for ``data`` (without the file name); raises ServiceError."""
        r = await self.run(loaded, data, params.window_s, params.hop_s, ticket)
        return build_embedding_result(loaded.name, r.job.embeddings, r.plan, params, r.timing, r.warnings)


def human_duration(seconds: float) -> str:
    """75.5 -> '1:15.5 (75.5 s)', 12.5 -> '12.5 s'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}:{rest:04.1f} ({seconds:.1f} s)"
