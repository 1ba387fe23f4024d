"""The dynamic batching worker on its own: batch composition, scatter-back, failures, limits.

``infer`` here is a plain function that reads the first samples of each window,
so every score (and every embedding, which carries the same facts in another
order) says which job and window it came from: a window landing in the wrong
job, or a batch mixing lengths, shows up as a wrong number.
"""
from __future__ import annotations

import gc
import threading
import weakref

import pytest
import torch

from service.batching import BatchWorker, QueueFull, TagJob, WorkerStopped


def make_job(job_id: int, windows: int, window: int = 8, hop: int = 4) -> TagJob:
    starts = [i * hop for i in range(windows)]
    wave = torch.zeros(starts[-1] + window)
    for i, s in enumerate(starts):
        wave[s] = job_id  # first sample of window i: the job id
        wave[s + 1] = i  # second: the window index
    return TagJob(waveform=wave, starts=starts, window=window)


class Recorder:
    """infer: (B, window) -> scores (B, 3) [job id, window index, window length] and embeddings
    (B, 2) [window index, job id]; remembers batch sizes.

    With a ``gate``, the first call sets ``entered`` (the worker has taken its first job off the
    queue and is inside the model) and holds there until the test opens the gate.
    """

    def __init__(self, gate: threading.Event | None = None, fail_on_job: int | None = None):
        self.sizes = []
        self.gate = gate
        self.entered = threading.Event()
        self.fail_on_job = fail_on_job

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"
        self.sizes.append(x.shape[0])
        if self.fail_on_job is not None and (x[:, 0] == self.fail_on_job).any():
            raise RuntimeError("model failure")
        scores = torch.stack([x[:, 0], x[:, 1], torch.full((x.shape[0],), float(x.shape[1]))], 1)
        return scores, torch.stack([x[:, 1], x[:, 0]], 1)


def check(job: TagJob, job_id: int):
    scores = job.future.result(10)
    assert scores is job.scores
    assert scores[:, 0].tolist() == [job_id] * job.num_windows
    assert scores[:, 1].tolist() == list(range(job.num_windows))
    assert scores[:, 2].tolist() == [job.window] * job.num_windows
    embeddings = job.embeddings
    assert embeddings.tolist() == [[i, job_id] for i in range(job.num_windows)]


def test_windows_of_several_jobs_share_batches_and_come_back_to_their_job():
    gate = threading.Event()
    rec = Recorder(gate)
    worker = BatchWorker("t", rec, max_batch_size=5, max_wait_ms=50, queue_size=16).start()
    try:
        first = make_job(1, 1)
        worker.submit(first)
        assert rec.entered.wait(10)  # the worker now blocks inside infer on the first job
        jobs = [make_job(j, n) for j, n in ((2, 3), (3, 4), (4, 1), (5, 2))]
        for j in jobs:
            worker.submit(j)
        gate.set()
        check(first, 1)
        for j, job in zip((2, 3, 4, 5), jobs):
            check(job, j)
        # 10 queued windows in batches of at most 5: exactly two full batches.
        assert rec.sizes == [1, 5, 5]
        assert worker.depth() == 0
    finally:
        worker.stop()


def test_batches_never_mix_window_lengths():
    gate = threading.Event()
    rec = Recorder(gate)
    worker = BatchWorker("t", rec, max_batch_size=8, max_wait_ms=20, queue_size=16).start()
    try:
        worker.submit(make_job(9, 1))
        assert rec.entered.wait(10)
        a, b, c = make_job(1, 2, window=8), make_job(2, 2, window=12, hop=6), make_job(3, 2, window=8)
        for j in (a, b, c):
            worker.submit(j)
        gate.set()
        for j, job in ((1, a), (2, b), (3, c)):
            check(job, j)
        # The 8-sample windows of jobs 1 and 3 go together, job 2's 12-sample windows alone.
        assert rec.sizes == [1, 4, 2]
    finally:
        worker.stop()


def test_a_failing_batch_fails_only_its_jobs_and_the_worker_goes_on():
    worker = BatchWorker("t", Recorder(fail_on_job=7), max_batch_size=1, max_wait_ms=0, queue_size=8).start()
    try:
        bad, good = make_job(7, 2), make_job(8, 3)
        worker.submit(bad)
        worker.submit(good)
        with pytest.raises(RuntimeError, match="model failure"):
            bad.future.result(10)
        check(good, 8)
        assert worker.is_alive()
        later = make_job(9, 1)
        worker.submit(later)
        check(later, 9)
    finally:
        worker.stop()


def test_full_queue_and_stop():
    gate = threading.Event()
    rec = Recorder(gate)
    worker = BatchWorker("t", rec, max_batch_size=1, max_wait_ms=0, queue_size=2).start()
    running = make_job(1, 1)
    worker.submit(running)
    assert rec.entered.wait(10)  # taken off the queue, blocked in infer
    queued = [make_job(2, 1), make_job(3, 1)]
    for j in queued:
        worker.submit(j)
    with pytest.raises(QueueFull) as e:
        worker.submit(make_job(4, 1))
    assert e.value.retry_after_s >= 1
    assert worker.depth() == 3
    # A cancelled job is dropped without running.
    assert queued[0].future.cancel()
    gate.set()
    check(queued[1], 3)
    assert queued[0].scores is None
    worker.stop()
    assert not worker.is_alive()
    with pytest.raises(WorkerStopped):
        worker.submit(make_job(5, 1))


def test_stop_fails_waiting_jobs():
    gate = threading.Event()
    rec = Recorder(gate)
    worker = BatchWorker("t", rec, max_batch_size=1, max_wait_ms=0, queue_size=4).start()
    worker.submit(make_job(1, 1))
    assert rec.entered.wait(10)
    waiting = make_job(2, 1)
    worker.submit(waiting)
    stopper = threading.Thread(target=worker.stop, kwargs={"timeout": 0.5})
    stopper.start()
    stopper.join()
    with pytest.raises(WorkerStopped):
        waiting.future.result(1)
    gate.set()


class OnTheWay:
    """The ``incoming`` count a worker reads, set by the test; ``polled`` is set once the worker,
    holding work, has asked for it (and so decided whether to wait)."""

    def __init__(self, count: int):
        self.count = count
        self.polled = threading.Event()

    def __call__(self) -> int:
        self.polled.set()
        return self.count


def test_lone_request_does_not_wait_when_nothing_is_on_its_way():
    # max_wait is ten minutes: a worker that waited for company would time the result out.
    on_the_way = OnTheWay(0)
    worker = BatchWorker("t", Recorder(), max_batch_size=8, max_wait_ms=600_000, queue_size=4, incoming=on_the_way).start()
    try:
        job = make_job(1, 1)
        worker.submit(job)
        check(job, 1)
        assert on_the_way.polled.is_set()
    finally:
        worker.stop()


def test_worker_waits_for_requests_on_their_way():
    on_the_way = OnTheWay(1)
    rec = Recorder()
    worker = BatchWorker("t", rec, max_batch_size=8, max_wait_ms=600_000, queue_size=4, incoming=on_the_way).start()
    try:
        first, second = make_job(1, 2), make_job(2, 3)
        worker.submit(first)
        assert on_the_way.polled.wait(10)  # it holds the first job and has seen one more on its way
        assert not first.future.done() and rec.sizes == []
        # The order the app uses: queued first, then no longer counted as on its way. The worker
        # must not run the first job alone in between.
        worker.submit(second)
        on_the_way.count = 0
        check(first, 1)
        check(second, 2)
        assert rec.sizes == [5]  # both in one batch
    finally:
        worker.stop()


def test_a_finished_job_is_freed_by_reference_counting_alone():
    # A job its future pointed back to would be a reference cycle: its waveform (23 MB for a
    # 3-minute upload) would wait for a full garbage collection, and a busy server's memory grows.
    gc.disable()
    worker = BatchWorker("t", Recorder(), max_batch_size=4, max_wait_ms=0, queue_size=4).start()
    try:
        first = make_job(1, 3)
        waveform = weakref.ref(first.waveform)
        worker.submit(first)
        check(first, 1)
        later = make_job(2, 1)
        worker.submit(later)
        check(later, 2)  # the worker has left the batch that held the first job
        del first
        assert waveform() is None
    finally:
        worker.stop()
        gc.enable()
