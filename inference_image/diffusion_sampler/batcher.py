"""Dynamic batching: a bounded queue and the one worker thread that owns the engine.

Requests with the same ``Shape`` (size, steps, guidance, scheduler, strength) are grouped, up to
``max_batch_size`` images, oldest request first so nothing starves. How long to wait for a batch
to fill is adaptive, because a fixed wait would add ``max_wait`` to every lone request:

* the clients of the batch that just finished are expected back (closed-loop clients resubmit
  within milliseconds), so the worker waits for ``last batch + already queued`` images, capped by
  ``max_batch_size`` and by ``max_wait`` counted from when the worker became free;
* a request arriving after an idle spell longer than ``max_wait`` starts at once.

With one client this adds no wait at all; with many, batches form at full size. Requests whose
deadline passed before their batch started, and requests whose client went away, are dropped
when the worker picks them (or earlier, by the HTTP side through ``cancel``).

This module must not touch HTTP: it resolves ``concurrent.futures.Future`` objects only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from .engine import BatchResult, Engine, Item, Shape
from .metrics import Metrics

log = logging.getLogger("diffusion_sampler.batcher")


class QueueFull(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__("queue full")
        self.retry_after_s = retry_after_s


class NotAccepting(Exception):
    """Draining or not ready: the request was never queued."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before its batch started."""


class Cancelled(Exception):
    """The client went away while the request was queued."""


@dataclass
class Job:
    shape: Shape
    items: list[Item]
    deadline: float  # time.monotonic()
    request_id: str = ""
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    state: str = "queued"  # queued -> running -> done, or queued -> dropped
    future: Future = field(default_factory=Future)


@dataclass
class JobResult:
    batch: BatchResult
    images: list  # this job's ImageResults, in order
    queue_wait_s: float
    # Wall clock (time.time()) when the batch started and when its pixels were on the host: the
    # worker is free from then on, while this job's PNGs are encoded on the HTTP side.
    batch_started_at: float = 0.0
    batch_finished_at: float = 0.0


class Batcher:
    def __init__(self, engine: Engine, metrics: Metrics, max_batch_size: int, max_wait_s: float, max_queue: int,
                 fault_latency_s: float = 0.0) -> None:
        self.engine = engine
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.fault_latency_s = fault_latency_s
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._accepting = False
        self._stopping = False
        self._busy = False
        self._last_batch_images = 0
        self._expect = 1
        self._free_since = time.monotonic()
        self._batch_seconds = 1.0  # moving average, for Retry-After
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()
        self.failed: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, warmup: bool) -> None:
        self._thread = threading.Thread(target=self._main, args=(warmup,), name="sampler-worker", daemon=True)
        self._thread.start()

    def _main(self, warmup: bool) -> None:
        try:
            self.engine.load()
            if warmup:
                self.engine.warmup()
        except BaseException as exc:  # noqa: BLE001 - reported through readyz and the log
            self.failed = exc
            log.exception("model load failed")
            return
        with self._cond:
            self._accepting = True
        self.ready.set()
        log.info("ready")
        self._loop()

    def drain(self) -> None:
        """Stop accepting; the worker finishes everything already queued, without waiting to fill."""
        with self._cond:
            self._accepting = False
            self._stopping = True
            self._cond.notify_all()

    def idle(self) -> bool:
        with self._cond:
            return not self._queue and not self._busy

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def depth(self) -> int:
        return len(self._queue)

    # -- the HTTP side ---------------------------------------------------------------------
    def submit(self, job: Job) -> Future:
        with self._cond:
            if not self._accepting:
                raise NotAccepting()
            if len(self._queue) >= self.max_queue:
                raise QueueFull(self._retry_after())
            self._queue.append(job)
            self.metrics.l(self.metrics.queue_depth).set(len(self._queue))
            self._cond.notify_all()
        return job.future

    def cancel(self, job: Job, reason: BaseException) -> bool:
        """Drop a job that has not started. False when it is already running or done."""
        with self._cond:
            if job.state != "queued":
                return False
            job.state = "dropped"
            with contextlib.suppress(ValueError):
                self._queue.remove(job)
            self.metrics.l(self.metrics.queue_depth).set(len(self._queue))
        job.future.set_exception(reason)
        return True

    def _retry_after(self) -> int:
        batches_ahead = math.ceil(len(self._queue) / max(1, self.max_batch_size))
        return max(1, math.ceil(batches_ahead * self._batch_seconds))

    # -- the worker ------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue and self._stopping:
                    return
                batch = self._collect()
                self._busy = bool(batch)
                now = time.monotonic()
                for job in batch:
                    job.state = "running"
                    job.started_at = now
                self.metrics.l(self.metrics.queue_depth).set(len(self._queue))
            if batch:
                self._run(batch)
            with self._cond:
                self._busy = False

    def _same_shape(self, shape: Shape, budget: int) -> list[Job]:
        picked: list[Job] = []
        images = 0
        for job in self._queue:
            if job.shape == shape and (not picked or images + len(job.items) <= budget):
                picked.append(job)
                images += len(job.items)
                if images >= budget:
                    break
        return picked

    def _collect(self) -> list[Job]:
        """Pick the next batch (called with the lock held); may wait for it to fill."""
        self._drop_stale()
        if not self._queue:
            return []
        first = self._queue[0]
        waiting_since = max(first.enqueued_at, self._free_since)
        if first.enqueued_at - self._free_since > self.max_wait_s:
            target = 1  # arrived after an idle spell: nobody else is coming back
        else:
            target = min(self.max_batch_size, max(1, self._expect))
        give_up = waiting_since + self.max_wait_s
        while True:
            picked = self._same_shape(first.shape, self.max_batch_size)
            images = sum(len(j.items) for j in picked)
            remaining = give_up - time.monotonic()
            if images >= target or remaining <= 0 or self._stopping or first.state != "queued":
                break
            self._cond.wait(remaining)
        self._drop_stale()
        picked = [j for j in self._same_shape(first.shape, self.max_batch_size)] if self._queue else []
        for job in picked:
            self._queue.remove(job)
        return picked

    def _drop_stale(self) -> None:
        now = time.monotonic()
        for job in [j for j in self._queue if j.deadline <= now]:
            job.state = "dropped"
            self._queue.remove(job)
            job.future.set_exception(DeadlineExceeded())

    def _run(self, batch: list[Job]) -> None:
        shape = batch[0].shape
        items = [item for job in batch for item in job.items]
        started = time.monotonic()
        started_wall = time.time()
        for job in batch:
            self.metrics.l(self.metrics.queue_wait).observe(started - job.enqueued_at)
        try:
            if self.fault_latency_s > 0:
                time.sleep(self.fault_latency_s)  # fault injection: a slow model
            result = self.engine.run(shape, items)
        except BaseException as exc:  # noqa: BLE001 - every waiting request gets the error
            log.exception("batch failed", extra={"batch": len(items)})
            with self._cond:
                self._last_batch_images = 0
                self._expect = 1
                self._free_since = time.monotonic()
            for job in batch:
                job.state = "done"
                job.future.set_exception(exc)
            return
        elapsed = time.monotonic() - started
        finished_wall = time.time()
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * elapsed
        with self._cond:
            # Before any response goes out (a client's next request must not be counted twice):
            # expect this batch's clients back, plus whatever queued up while it ran.
            self._last_batch_images = len(items)
            self._expect = len(items) + sum(len(j.items) for j in self._queue)
            self._free_since = time.monotonic()
        log.debug("batch done", extra={"batch": len(items), "seconds": round(elapsed, 3),
                                       "requests": [j.request_id for j in batch]})
        offset = 0
        for job in batch:
            images = result.images[offset : offset + len(job.items)]
            offset += len(job.items)
            job.state = "done"
            job.future.set_result(JobResult(result, images, started - job.enqueued_at, started_wall, finished_wall))
