"""Micro-batching between the views and the backend: one thread per worker.

Concurrent requests' images wait in a bounded queue (counted in images, not requests); the
batcher thread takes up to `max_batch_size` images, possibly from several requests and possibly
part of a large request, runs them as one model call and hands each request its own rows back
in order. A full queue refuses at once (503 + Retry-After); a request that gives up (504) has
its not-yet-started images removed from the queue.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from service.errors import BackendFailed, QueueFull, ServiceError, ShuttingDown

_log = logging.getLogger(__name__)

PolicyName = Literal["off", "fixed", "adaptive"]
RunBatch = Callable[[NDArray[np.float32]], NDArray[np.float32]]


@dataclass(frozen=True)
class BatchReport:
    """What happened in one model call; fed to metrics and the debug log."""

    batch_id: int
    size: int
    padded_size: int
    requests: int
    queue_wait_s: tuple[float, ...]
    run_s: float
    failed: bool


@dataclass(eq=False)
class BatchJob:
    """One request's images on their way through the batcher."""

    rows: NDArray[np.float32]
    enqueued_at: float
    future: Future[NDArray[np.float32]] = field(default_factory=Future)
    next_row: int = 0  # first row not yet taken into a batch
    done_rows: int = 0
    output: NDArray[np.float32] | None = None
    abandoned: bool = False
    batch_ids: list[int] = field(default_factory=list)

    @property
    def pending_rows(self) -> int:
        return len(self.rows) - self.next_row


class CostModel:
    """Least-squares fit of batch run time = a * size + b over recent batches (as BentoML)."""

    def __init__(self, window: int = 64) -> None:
        self._samples: deque[tuple[int, float]] = deque(maxlen=window)

    def observe(self, size: int, run_s: float) -> None:
        self._samples.append((size, run_s))

    def fit(self) -> tuple[float, float]:
        """(seconds per image, fixed seconds per call); (0, 0) until something was measured."""
        if not self._samples:
            return 0.0, 0.0
        sizes = np.array([s for s, _ in self._samples], dtype=np.float64)
        times = np.array([t for _, t in self._samples], dtype=np.float64)
        if np.ptp(sizes) == 0:
            return float(times.mean() / sizes[0]), 0.0
        slope, intercept = np.polyfit(sizes, times, 1)
        return max(float(slope), 0.0), max(float(intercept), 0.0)

    def estimate_s(self, size: int) -> float:
        """Predicted run time of a batch of `size`."""
        per_image_s, fixed_s = self.fit()
        return per_image_s * size + fixed_s


class ArrivalRate:
    """Exponentially weighted images-per-second arriving at the queue."""

    def __init__(self, smoothing: float = 0.2) -> None:
        self._smoothing = smoothing
        self._last_at: float | None = None
        self._gap_s: float | None = None

    def observe(self, now: float, images: int) -> None:
        if self._last_at is not None:
            gap = max(now - self._last_at, 1e-6) / max(images, 1)
            self._gap_s = gap if self._gap_s is None else (
                self._smoothing * gap + (1 - self._smoothing) * self._gap_s
            )
        self._last_at = now

    def time_to_next_s(self, now: float) -> float:
        """Expected wait for the next image; infinite when unknown or arrivals have stalled."""
        if self._gap_s is None or self._last_at is None:
            return math.inf
        since_last = now - self._last_at
        if since_last > 2 * self._gap_s:
            return math.inf
        return max(self._gap_s - since_last, 0.0)


def allowed_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two up to and including max_batch_size (TF Serving's allowed_batch_sizes)."""
    sizes = [1 << bit for bit in range(max_batch_size.bit_length()) if (1 << bit) < max_batch_size]
    return sizes + [max_batch_size]


class MicroBatcher:
    """Merge concurrent requests into model calls; see the module docstring for the contract."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        policy: PolicyName = "fixed",
        max_batch_size: int = 8,
        max_batch_delay_s: float = 0.005,
        max_queue_size: int = 256,
        target_latency_s: float = 0.25,
        pad_batches: bool = False,
        on_batch: Callable[[BatchReport], None] | None = None,
        on_queue_depth: Callable[[int], None] | None = None,
        name: str = "model",
        num_threads: int = 1,
    ) -> None:
        if max_queue_size < max_batch_size:
            raise ValueError("max_queue_size must be at least max_batch_size")
        self.policy = policy
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_s
        self.max_queue_size = max_queue_size
        self.target_latency_s = target_latency_s
        self._run_batch = run_batch
        self._pad_sizes = allowed_batch_sizes(max_batch_size) if pad_batches else None
        self._on_batch = on_batch
        self._on_queue_depth = on_queue_depth
        self._jobs: deque[BatchJob] = deque()
        self._queued_rows = 0
        self._arriving = 0
        self._cond = threading.Condition()
        self._closing = False
        self._batch_counter = 0
        self.cost = CostModel()
        self._arrivals = ArrivalRate()
        # NOTE: more than one thread (TF Serving's num_batch_threads) only pays when the backend
        # runs batches in parallel elsewhere, e.g. TF Serving on a GPU or several replicas.
        self._threads = [
            threading.Thread(target=self._loop, name=f"batcher-{name}-{index}", daemon=True)
            for index in range(num_threads)
        ]
        for thread in self._threads:
            thread.start()

    # --- called from request threads ---------------------------------------------------------

    def submit(self, rows: NDArray[np.float32], announced: int = 0) -> BatchJob:
        """Queue a request's images; its `future` resolves to their outputs, in order.

        Raises:
            QueueFull: the queue cannot take all of these images now (nothing was queued).
            ShuttingDown: the worker is draining for shutdown.
        """
        if len(rows) == 0:
            raise ValueError("a request needs at least one image")
        now = time.monotonic()
        job = BatchJob(rows=rows, enqueued_at=now)
        with self._cond:
            self._arriving -= announced
            if self._closing:
                raise ShuttingDown("worker is shutting down", retry_after_s=1)
            if self._queued_rows + len(rows) > self.max_queue_size:
                raise QueueFull(
                    f"queue holds {self._queued_rows} of {self.max_queue_size} images; "
                    f"cannot take {len(rows)} more",
                    retry_after_s=self._retry_after_s(),
                )
            self._jobs.append(job)
            self._queued_rows += len(rows)
            self._arrivals.observe(now, len(rows))
            depth = self._queued_rows
            self._cond.notify()
        self._report_depth(depth)
        return job

    def announce(self, images: int) -> None:
        """Images are being decoded for this batcher. The fixed policy waits for company only
        while someone is on the way, so a lone request is not delayed for nothing; `submit(...,
        announced=n)` or `withdraw(n)` settles the announcement."""
        with self._cond:
            self._arriving += images

    def withdraw(self, images: int) -> None:
        """An announced request failed before submitting (bad image, model gone)."""
        with self._cond:
            self._arriving -= images
            self._cond.notify_all()

    def ensure_room(self, images: int) -> None:
        """Shed load before a request pays for decoding, when its images obviously cannot fit."""
        if self._queued_rows + images > self.max_queue_size:
            raise QueueFull(
                f"queue holds {self._queued_rows} of {self.max_queue_size} images",
                retry_after_s=self._retry_after_s(),
            )

    def abandon(self, job: BatchJob) -> None:
        """Give up on a job (its caller timed out): images not yet started leave the queue."""
        with self._cond:
            if job.abandoned or job.future.done():
                return
            job.abandoned = True
            if job in self._jobs:
                self._jobs.remove(job)
                self._queued_rows -= job.pending_rows
            depth = self._queued_rows
        job.future.cancel()
        self._report_depth(depth)

    @property
    def queued_images(self) -> int:
        return self._queued_rows

    def describe(self) -> dict[str, object]:
        """The active policy and its parameters, for status routes."""
        return {
            "policy": self.policy,
            "max_batch_size": self.max_batch_size,
            "max_batch_delay_ms": self.max_batch_delay_s * 1000,
            "max_queue_size": self.max_queue_size,
            "target_latency_ms": self.target_latency_s * 1000,
            "allowed_batch_sizes": self._pad_sizes,
            "batch_threads": len(self._threads),
            "queued_images": self._queued_rows,
        }

    def close(self, timeout_s: float | None = None) -> None:
        """Refuse new work, finish everything queued, and stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(None if deadline is None else max(deadline - time.monotonic(), 0))

    # --- the batcher thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            self._execute(batch)

    def _collect(self) -> list[tuple[BatchJob, int, int]] | None:
        """Block until a batch is due; take its rows out of the queue."""
        with self._cond:
            while not self._jobs:
                if self._closing:
                    return None
                self._cond.wait()
            while not self._closing:
                wait_s = self._wait_budget_s(time.monotonic())
                if wait_s <= 0:
                    break
                self._cond.wait(wait_s)
                if not self._jobs:  # everything queued was abandoned while we waited
                    return []
            return self._take_rows()

    def _wait_budget_s(self, now: float) -> float:
        """How much longer the oldest queued image may wait for others (<= 0: go now)."""
        if self._queued_rows >= self.max_batch_size or self.policy == "off":
            return 0.0
        age_s = now - self._jobs[0].enqueued_at
        if self.policy == "fixed":
            # Nothing is being decoded for us: waiting could only add latency.
            return self.max_batch_delay_s - age_s if self._arriving else 0.0
        # Adaptive: wait for the next image only if it is expected soon enough to be worth it
        # (sooner than the fixed cost of a model call it saves) and before the latency target
        # would be missed by the bigger batch it makes.
        per_image_s, fixed_cost_s = self.cost.fit()
        budget = self.target_latency_s - age_s - (per_image_s * (self._queued_rows + 1) + fixed_cost_s)
        measured = per_image_s > 0 or fixed_cost_s > 0
        worth_s = fixed_cost_s if measured else self.max_batch_delay_s
        time_to_next = self._arrivals.time_to_next_s(now)
        if time_to_next > min(budget, worth_s):
            return 0.0
        return max(time_to_next, 1e-4)

    def _take_rows(self) -> list[tuple[BatchJob, int, int]]:
        """Pop up to max_batch_size rows; 'off' takes a single request's rows."""
        taken: list[tuple[BatchJob, int, int]] = []
        room = self.max_batch_size
        while self._jobs and room > 0:
            job = self._jobs[0]
            start = job.next_row
            count = min(room, job.pending_rows)
            job.next_row += count
            room -= count
            taken.append((job, start, start + count))
            if job.pending_rows == 0:
                self._jobs.popleft()
            if self.policy == "off":
                break
        self._queued_rows -= sum(stop - start for _, start, stop in taken)
        return taken

    def _execute(self, batch: list[tuple[BatchJob, int, int]]) -> None:
        self._report_depth(self._queued_rows)
        live = [part for part in batch if self._start(part[0])]
        if not live:
            return
        with self._cond:
            self._batch_counter += 1
            batch_id = self._batch_counter
        started = time.monotonic()
        size = sum(stop - start for _, start, stop in live)
        padded = self._padded_size(size)
        if len(live) == 1:  # one request fills the batch: no copy
            job, start, stop = live[0]
            inputs = job.rows[start:stop]
        else:
            inputs = np.concatenate([job.rows[start:stop] for job, start, stop in live])
        if padded > size:
            # Repeating real rows (not zeros) keeps padding numerically harmless for any model.
            filler = np.repeat(inputs[-1:], padded - size, axis=0)
            inputs = np.concatenate([inputs, filler])
        failed = False
        try:
            outputs = self._run_batch(inputs)
            if len(outputs) != padded:
                raise BackendFailed(f"model returned {len(outputs)} rows for a batch of {padded}")
        except Exception as err:  # noqa: BLE001 - any model failure fails exactly this batch
            failed = True
            error = err if isinstance(err, ServiceError) else BackendFailed(f"model call failed: {err}")
            _log.warning("batch %d of %d images failed: %s", batch_id, size, err)
            for job, _, _ in live:
                self._fail(job, error)
        run_s = time.monotonic() - started
        if not failed:
            self.cost.observe(padded, run_s)
            offset = 0
            for job, start, stop in live:
                self._deliver(job, start, stop, outputs[offset : offset + stop - start], batch_id)
                offset += stop - start
        report = BatchReport(
            batch_id=batch_id,
            size=size,
            padded_size=padded,
            requests=len({id(job) for job, _, _ in live}),
            queue_wait_s=tuple(started - job.enqueued_at for job, _, _ in live),
            run_s=run_s,
            failed=failed,
        )
        _log.debug(
            "batch %d: %d images (padded %d) from %d requests, max wait %.1f ms, run %.1f ms",
            batch_id, size, padded, report.requests,
            1000 * max(report.queue_wait_s), 1000 * run_s,
        )
        if self._on_batch is not None:
            self._on_batch(report)

    def _start(self, job: BatchJob) -> bool:
        """Mark the job running; False if its caller already gave up (stdlib cancel protocol)."""
        if job.abandoned or job.future.cancelled():
            return False
        if job.future.running():
            return True
        return job.future.set_running_or_notify_cancel()

    def _deliver(self, job: BatchJob, start: int, stop: int, part: NDArray[np.float32], batch_id: int) -> None:
        if job.future.done():
            return
        if job.output is None:
            job.output = np.empty((len(job.rows), *part.shape[1:]), dtype=part.dtype)
        job.output[start:stop] = part
        job.done_rows += stop - start
        job.batch_ids.append(batch_id)
        if job.done_rows == len(job.rows):
            job.future.set_result(job.output)

    def _fail(self, job: BatchJob, error: Exception) -> None:
        with self._cond:
            # The rest of a failed request must not run: take its remaining rows out too.
            if job in self._jobs:
                self._jobs.remove(job)
                self._queued_rows -= job.pending_rows
        if not job.future.done():
            job.future.set_exception(error)

    def _padded_size(self, size: int) -> int:
        if self._pad_sizes is None:
            return size
        return next(allowed for allowed in self._pad_sizes if allowed >= size)

    def _retry_after_s(self) -> int:
        per_image_s = self.cost.estimate_s(self.max_batch_size) / self.max_batch_size
        return max(1, math.ceil(self._queued_rows * per_image_s))

    def _report_depth(self, depth: int) -> None:
        if self._on_queue_depth is not None:
            self._on_queue_depth(depth)
