"""Dynamic micro-batching: one inference thread per model, fed by a bounded queue.

A request becomes one :class:`TagJob`: its decoded waveform (zero-padded so
every window is whole) and the start sample of each analysis window. One
forward pass gives every window its class scores and its embedding, so
tagging (POST /v1/tag) and embedding (POST /v1/embed) requests share
batches. The
worker thread takes jobs off the queue and cuts batches of at most
``max_batch_size`` *windows*, mixing windows of several jobs; once it holds
some work it waits at most ``max_wait_ms`` for more before running a partial
batch. A long file therefore shares batches with short ones instead of
blocking them, and the batch a window lands in never changes its scores
(every layer of the models acts per example in eval mode).

Windows of different lengths (requests with different ``window_s``) cannot
share a tensor: a batch only takes windows as long as those of the oldest
job, and the others wait for the next batch, so nobody starves.

Inference never runs on the event loop: routes submit a job and await its
``concurrent.futures.Future`` through ``asyncio.wrap_future``. A full queue
raises :class:`QueueFull` at once (HTTP 503 with Retry-After). An exception
in the model fails the jobs of that batch only; the thread goes on.
"""
from __future__ import annotations

import collections
import logging
import math
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Callable, Deque, List, Optional, Sequence, Tuple

import numpy as np
import torch

log = logging.getLogger("service.batching")


def _settle(future: Future, result=None, error: Optional[BaseException] = None) -> None:
    """Complete a future unless the client cancelled it meanwhile (a race we accept)."""
    try:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


class QueueFull(Exception):
    """The model's queue holds ``queue_size`` requests already."""

    def __init__(self, retry_after_s: int):
        super().__init__(f"queue full, retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class WorkerStopped(Exception):
    """The worker was shut down before the job ran."""


@dataclass
class TagJob:
    waveform: torch.Tensor  # (N,) float32, padded so that every window fits
    starts: Sequence[int]  # start sample of each window
    window: int  # window length in samples
    future: Future = field(default_factory=Future)  # set to `scores` once every window has run
    scores: Optional[np.ndarray] = None  # (W, C) filled window by window
    embeddings: Optional[np.ndarray] = None  # (W, D) likewise, from the same forward passes
    next_window: int = 0  # first window not yet handed to a batch
    done_windows: int = 0
    submitted_at: float = 0.0  # time.perf_counter() values, for the timing block of the response
    first_batch_at: Optional[float] = None
    compute_s: float = 0.0  # this job's share of the forward passes it took part in

    @property
    def num_windows(self) -> int:
        return len(self.starts)

    @property
    def remaining(self) -> int:
        return self.num_windows - self.next_window


class BatchWorker:
    """Runs ``infer`` on batches of windows: float32 (B, window) waveforms -> (scores (B, C), embeddings (B, D)),
    e.g. :meth:`audio_dcls.inference.PreparedRelease.infer`."""

    def __init__(
        self,
        name: str,
        infer: Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]],
        max_batch_size: int,
        max_wait_ms: float,
        queue_size: int,
        torch_threads: int = 1,
        on_batch: Optional[Callable[[int, float], None]] = None,
        incoming: Optional[Callable[[], int]] = None,
    ):
        self.name = name
        self.infer = infer
        self.max_batch_size = int(max_batch_size)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self.queue_size = int(queue_size)
        self.torch_threads = int(torch_threads)
        self.on_batch = on_batch  # called with (windows in the batch, seconds) after every forward
        # Requests known to be on their way (received, still uploading or decoding). When given, the
        # worker waits for more work only while some are: a lone request never waits max_wait_ms for
        # company that is not coming. Without it, every partial batch waits the full max_wait_ms.
        self.incoming = incoming
        self._queue: "queue.Queue[Optional[TagJob]]" = queue.Queue(maxsize=self.queue_size)
        self._pending: Deque[TagJob] = collections.deque()  # taken off the queue, windows left to run
        self._lock = threading.Lock()  # guards _pending's length for depth() readers
        self._stopping = threading.Event()
        self._seconds_per_window = 0.0  # running mean, for Retry-After
        self._thread = threading.Thread(target=self._run, name=f"infer-{name}", daemon=True)

    # --- control ---------------------------------------------------------------------
    def start(self) -> "BatchWorker":
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        try:
            self._queue.put_nowait(None)  # wake the thread if it waits on an empty queue
        except queue.Full:
            pass
        self._thread.join(timeout)
        leftovers = list(self._pending)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                leftovers.append(job)
        for job in leftovers:
            _settle(job.future, error=WorkerStopped(f"model {self.name} is shutting down"))

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def depth(self) -> int:
        """Requests waiting or in progress (queued plus partly run)."""
        with self._lock:
            return self._queue.qsize() + len(self._pending)

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained enough to take a new request."""
        with self._lock:
            waiting = list(self._pending)
        windows = sum(j.remaining for j in waiting) + self._queue.qsize()
        return max(1, math.ceil(windows * self._seconds_per_window))

    # --- submission --------------------------------------------------------------------
    def submit(self, job: TagJob) -> Future:
        if self._stopping.is_set() or not self._thread.is_alive():
            raise WorkerStopped(f"model {self.name} is not running")
        job.submitted_at = time.perf_counter()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(self.retry_after()) from None
        return job.future

    # --- the thread ----------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_num_threads(self.torch_threads)  # per thread under OpenMP: set it here, not only in main
        while not self._stopping.is_set():
            try:
                self._step()
            except Exception:  # never let one bad batch end the thread
                log.exception("inference worker %s: unexpected error", self.name)

    def _take(self, block: bool, timeout: Optional[float] = None) -> bool:
        """Move one job from the queue to _pending; False when there was none (or stop)."""
        try:
            job = self._queue.get(block=block, timeout=timeout)
        except queue.Empty:
            return False
        if job is None:
            return False
        if job.future.done():
            return True  # cancelled (the client went away) before it started: drop it
        with self._lock:
            self._pending.append(job)
        return True

    def _available(self) -> int:
        head = self._pending[0]
        return sum(j.remaining for j in self._pending if j.window == head.window)

    def _step(self) -> None:
        self._drop_cancelled()
        if not self._pending:
            self._take(block=True)
            if not self._pending:
                return
        # Collect more work until a batch is full or the oldest work has waited max_wait. What already
        # sits in the queue costs no waiting and is always taken.
        deadline = time.perf_counter() + self.max_wait_s
        while self._available() < self.max_batch_size:
            if self._take(block=False):
                continue
            left = deadline - time.perf_counter()
            if left <= 0 or self._stopping.is_set():
                break
            if self.incoming is None:
                self._take(block=True, timeout=left)
            elif self.incoming() > 0:
                self._take(block=True, timeout=min(left, 0.001))  # poll: stop waiting once nothing is on its way
            elif not self._take(block=False):
                # A request leaves the count only once it is queued, so one that left it since the take above
                # is in the queue now: take it before giving up.
                break
        if self._stopping.is_set():
            return
        self._run_batch()

    def _drop_cancelled(self) -> None:
        with self._lock:
            alive = [j for j in self._pending if not j.future.done()]
            self._pending.clear()
            self._pending.extend(alive)

    def _run_batch(self) -> None:
        head = self._pending[0]
        members: List[tuple] = []  # (job, window index)
        for job in list(self._pending):
            if job.window != head.window:
                continue
            while job.remaining and len(members) < self.max_batch_size:
                members.append((job, job.next_window))
                job.next_window += 1
            if len(members) == self.max_batch_size:
                break
        started = time.perf_counter()
        for job, _ in members:
            if job.first_batch_at is None:
                job.first_batch_at = started
        try:
            batch = torch.stack([job.waveform[job.starts[i] : job.starts[i] + job.window] for job, i in members])  # (B, window)
            scores, embeddings = (t.detach().to("cpu", torch.float32).numpy() for t in self.infer(batch))  # (B, C), (B, D)
            if scores.shape[0] != len(members) or embeddings.shape[0] != len(members):
                raise RuntimeError(f"model returned shapes {scores.shape} and {embeddings.shape} for {len(members)} windows")
            if not (np.isfinite(scores).all() and np.isfinite(embeddings).all()):
                raise RuntimeError("model returned non-finite scores or embeddings")
        except Exception as e:
            log.exception("inference worker %s: batch of %d windows failed", self.name, len(members))
            failed = {id(job): job for job, _ in members}
            for job in failed.values():
                _settle(job.future, error=e)
            with self._lock:
                keep = [j for j in self._pending if id(j) not in failed]
                self._pending.clear()
                self._pending.extend(keep)
            return
        elapsed = time.perf_counter() - started
        per_window = elapsed / len(members)
        self._seconds_per_window = per_window if self._seconds_per_window == 0 else 0.8 * self._seconds_per_window + 0.2 * per_window
        finished = []
        for row, (job, i) in enumerate(members):
            if job.scores is None:
                job.scores = np.empty((job.num_windows, scores.shape[1]), np.float32)
                job.embeddings = np.empty((job.num_windows, embeddings.shape[1]), np.float32)
            job.scores[i] = scores[row]
            job.embeddings[i] = embeddings[row]
            job.done_windows += 1
            job.compute_s += per_window
            if job.done_windows == job.num_windows:
                finished.append(job)
        if finished:
            with self._lock:
                keep = [j for j in self._pending if all(j is not f for f in finished)]
                self._pending.clear()
                self._pending.extend(keep)
            for job in finished:
                # The scores, not the job: a job whose future held it would be a reference cycle, and its
                # waveform would wait for the garbage collector instead of going with the request.
                _settle(job.future, result=job.scores)
        if self.on_batch is not None:
            try:
                self.on_batch(len(members), elapsed)
            except Exception:
                log.exception("inference worker %s: batch callback failed", self.name)
