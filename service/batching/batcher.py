"""The micro-batcher: the request pipeline's one way to the backend, one thread per worker.

Concurrent requests' images wait in a bounded queue (counted in images, not requests); the
batcher thread takes up to `max_batch_size` images, possibly from several requests and possibly
part of a large request, runs them as one model call and hands each request its own rows back
in order. A full queue refuses at once (503 + Retry-After); a request that gives up (504) has
its not-yet-started images removed from the queue.

Background work (whole-plate jobs) waits in a second, small queue and runs only in batches of
its own while no interactive image is in hand (see `service.batching.lanes`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from service import tracing
from service.batching.jobs import (
    BatchJob,
    BatchReport,
    Outputs,
    Reservation,
    assemble_inputs,
    output_rows,
    output_slice,
)
from service.batching.lanes import Lanes, Part
from service.batching.policy import BatchingPolicy, CostModel, PolicyName, allowed_batch_sizes
from service.batching.supervisor import ThreadSupervisor
from service.errors import ModelCallFailed, QueueFull, ServiceError, ShuttingDown

_log = logging.getLogger(__name__)

RunBatch = Callable[[NDArray[np.float32]], Outputs]


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
        on_thread_restart: Callable[[], None] | None = None,
        max_background_queue_size: int | None = None,
    ) -> None:
        if max_queue_size < max_batch_size:
            raise ValueError("max_queue_size must be at least max_batch_size")
        self.policy = policy
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_s
        self.max_queue_size = max_queue_size
        self.target_latency_s = target_latency_s
        self._policy = BatchingPolicy(policy, max_batch_size, max_batch_delay_s, target_latency_s)
        self._run_batch = run_batch
        self._pad_sizes = allowed_batch_sizes(max_batch_size) if pad_batches else None
        self._on_batch = on_batch
        self._on_queue_depth = on_queue_depth
        self.max_background_queue_size = max_background_queue_size or max_batch_size
        self._lanes = Lanes(self.max_background_queue_size)
        self._arriving = 0
        self._cond = threading.Condition()
        self._closing = False
        self._batch_counter = 0
        # NOTE: more than one thread (TF Serving's num_batch_threads) only pays when the backend
        # runs batches in parallel elsewhere, e.g. TF Serving on a GPU or several replicas.
        self._threads = ThreadSupervisor(self._loop, name, num_threads, on_thread_restart)

    @property
    def alive_threads(self) -> int:
        """Batcher threads running now."""
        return self._threads.alive

    def healthy(self) -> bool:
        """Every batcher thread alive (see `service.batching.supervisor`); /readyz reads it."""
        return self._closing or self._threads.healthy()

    def _replace_thread(self, index: int) -> None:
        """Called by a dying batcher thread: a successor starts, or what is queued fails."""
        if self._closing or self._threads.replace(index):
            return
        with self._cond:
            doomed = self._lanes.queued()
        for job in doomed:
            self._fail(job, ModelCallFailed("the batcher stopped"))

    # --- called from request threads ---------------------------------------------------------

    def submit(self, rows: NDArray[np.float32], announced: int = 0, background: bool = False) -> BatchJob:
        """Queue a request's images; its `future` resolves to their outputs, in order.

        `background` images (a job's) wait behind every interactive image, queued or announced, in
        their own queue of `max_background_queue_size` images.

        Raises:
            QueueFull: the queue cannot take all of these images now (nothing was queued).
            ShuttingDown: the worker is draining for shutdown.
        """
        if len(rows) == 0:
            raise ValueError("a request needs at least one image")
        now = time.monotonic()
        job = BatchJob(rows=rows, enqueued_at=now, trace_context=tracing.current_context(), background=background)
        with self._cond:
            self._arriving -= announced
            if self._closing:
                raise ShuttingDown("worker is shutting down", retry_after_s=1)
            if self._threads.gave_up:
                raise ModelCallFailed("the batcher stopped; the worker is not ready")
            if background:
                self._lanes.push(job)
                self._cond.notify()
                return job
            queued = self._lanes.interactive_rows
            if queued + len(rows) > self.max_queue_size:
                raise QueueFull(
                    f"queue holds {queued} of {self.max_queue_size} images; cannot take {len(rows)} more",
                    retry_after_s=self._policy.retry_after_s(queued),
                )
            self._lanes.push(job)
            self._policy.arrivals.observe(now, len(rows))
            depth = self._lanes.interactive_rows
            self._lanes.note_idle(self._arriving)
            self._cond.notify()
        self._report_depth(depth)
        return job

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until no interactive image is queued, announced or running (True), or until
        the timeout (False): background work starts decoding only then, so it takes neither
        model time nor CPU from interactive requests."""
        return self._lanes.idle.wait(timeout_s)

    def reserve(self, images: int, background: bool = False) -> Reservation:
        """Claim room for a request's images before it pays for decoding them.

        Use as a context manager around decoding and `Reservation.submit`: a request that
        obviously cannot fit is refused at once (503), the fixed policy knows images are on
        their way (so it waits for them, and only for them), and a request that fails before
        submitting gives its claim back on exit. Background images are not announced: no
        batch waits for them.

        Raises:
            QueueFull: the queue cannot take `images` more now.
        """
        if background:
            return Reservation(self, 0, background=True)
        self.ensure_room(images)
        self.announce(images)
        return Reservation(self, images)

    def announce(self, images: int) -> None:
        """Images are being decoded for this batcher. The fixed policy waits for company only
        while someone is on the way, so a lone request is not delayed for nothing; `submit(...,
        announced=n)` or `withdraw(n)` settles the announcement."""
        with self._cond:
            self._arriving += images
            self._lanes.note_idle(self._arriving)

    def withdraw(self, images: int) -> None:
        """An announced request failed before submitting (bad image, model gone)."""
        with self._cond:
            self._arriving -= images
            self._lanes.note_idle(self._arriving)
            self._cond.notify_all()

    def ensure_room(self, images: int) -> None:
        """Shed load before a request pays for decoding, when its images obviously cannot fit."""
        queued = self._lanes.interactive_rows
        if queued + images > self.max_queue_size:
            raise QueueFull(f"queue holds {queued} of {self.max_queue_size} images",
                            retry_after_s=self._policy.retry_after_s(queued))

    def abandon(self, job: BatchJob) -> None:
        """Give up on a job (its caller timed out): images not yet started leave the queue."""
        with self._cond:
            if job.abandoned or job.future.done():
                return
            job.abandoned = True
            self._lanes.remove(job)
            self._lanes.note_idle(self._arriving)
            depth = self._lanes.interactive_rows
        job.future.cancel()
        self._report_depth(depth)

    @property
    def cost(self) -> CostModel:
        """The measured batch cost curve (a·n + b)."""
        return self._policy.cost

    @property
    def queued_images(self) -> int:
        return self._lanes.interactive_rows

    def describe(self) -> dict[str, object]:
        """The active policy and its parameters, for status routes."""
        return {
            "policy": self.policy,
            "max_batch_size": self.max_batch_size,
            "max_batch_delay_ms": self.max_batch_delay_s * 1000,
            "max_queue_size": self.max_queue_size,
            "target_latency_ms": self.target_latency_s * 1000,
            "allowed_batch_sizes": self._pad_sizes,
            "batch_threads": len(self._threads.threads),
            "queued_images": self._lanes.interactive_rows,
            "queued_background_images": self._lanes.background_rows,
        }

    def close(self, timeout_s: float | None = None) -> None:
        """Refuse new work, finish everything queued, and stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._threads.join(None if timeout_s is None else time.monotonic() + timeout_s)

    # --- the batcher thread ---------------------------------------------------------------------

    def _loop(self, index: int) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            try:
                self._execute(batch)
            except BaseException as err:
                # Whatever broke outside the model call (concatenating, delivering, a metrics
                # callback) fails exactly this batch's requests, never later ones.
                failure = err if isinstance(err, ServiceError) else ModelCallFailed(f"batch failed: {err!r}")
                for job, _, _ in batch:
                    self._fail(job, failure)
                if not isinstance(err, Exception):
                    self._replace_thread(index)
                    raise
                _log.exception("batch failed outside the model call")
            finally:
                with self._cond:
                    self._lanes.finished(batch, self._arriving)

    def _collect(self) -> list[Part] | None:
        """Block until a batch is due; take its rows out of the queue."""
        lanes = self._lanes
        with self._cond:
            while not lanes.ready(self._arriving, self._closing):
                if self._closing:
                    return None
                self._cond.wait()
            while not self._closing:
                wait_s = self._policy.wait_budget_s(
                    time.monotonic(), lanes.interactive_rows + lanes.background_rows, lanes.oldest_enqueued_at(),
                    self._arriving,
                )
                if wait_s <= 0:
                    break
                self._cond.wait(wait_s)
                if not lanes.ready(self._arriving, self._closing):  # abandoned, or an interactive one announced
                    return []
            return lanes.take(self.max_batch_size, self._arriving, self._closing, one_job=self.policy == "off")

    def _execute(self, batch: list[Part]) -> None:
        self._report_depth(self._lanes.interactive_rows)
        live = [part for part in batch if part[0].start()]
        if not live:
            return
        with self._cond:
            self._batch_counter += 1
            batch_id = self._batch_counter
        started = time.monotonic()
        size = sum(stop - start for _, start, stop in live)
        padded = self._padded_size(size)
        inputs = assemble_inputs(live, padded)
        failed = False
        try:
            with tracing.batch_span([job for job, _, _ in live], started, batch_id=batch_id, images=size, padded=padded):
                outputs = self._run_batch(inputs)
            if output_rows(outputs) != padded:
                raise ModelCallFailed(f"model returned {output_rows(outputs)} rows for a batch of {padded}")
        except Exception as err:  # noqa: BLE001 - any model failure fails exactly this batch
            failed = True
            error = err if isinstance(err, ServiceError) else ModelCallFailed(f"model call failed: {err}")
            _log.warning("batch %d of %d images failed: %s", batch_id, size, err)
            for job, _, _ in live:
                self._fail(job, error)
        run_s = time.monotonic() - started
        for job, _, _ in live:
            if job.first_batch_at is None:
                job.first_batch_at = started
            job.model_s += run_s
        if not failed:
            self._policy.cost.observe(padded, run_s)
            offset = 0
            for job, start, stop in live:
                job.deliver(start, stop, output_slice(outputs, offset, offset + stop - start), batch_id)
                offset += stop - start
        report = BatchReport(
            batch_id=batch_id, size=size, padded_size=padded, requests=len({id(job) for job, _, _ in live}),
            queue_wait_s=tuple(started - job.enqueued_at for job, _, _ in live), run_s=run_s, failed=failed,
        )
        _log.debug(
            "batch %d: %d images (padded %d) from %d requests, max wait %.1f ms, run %.1f ms",
            batch_id, size, padded, report.requests,
            1000 * max(report.queue_wait_s), 1000 * run_s,
        )
        if self._on_batch is not None:
            self._on_batch(report)

    def _fail(self, job: BatchJob, error: Exception) -> None:
        with self._cond:
            # The rest of a failed request must not run: take its remaining rows out too.
            self._lanes.remove(job)
            self._lanes.note_idle(self._arriving)
        if not job.future.done():
            job.future.set_exception(error)

    def _padded_size(self, size: int) -> int:
        if self._pad_sizes is None:
            return size
        return next(allowed for allowed in self._pad_sizes if allowed >= size)

    def _report_depth(self, depth: int) -> None:
        if self._on_queue_depth is not None:
            self._on_queue_depth(depth)

