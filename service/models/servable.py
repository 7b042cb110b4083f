"""One model version loaded in this worker: its backend, its batcher, its lifecycle state.

States follow TF Serving's ModelVersionStatus (LOADING -> AVAILABLE -> UNLOADING -> END); a
version that failed to load stays visible as END with its error, as TF Serving reports it.
"""

from __future__ import annotations

import enum
import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from service import metrics
from service.backends import Backend
from service.batching import BatchJob, BatchReport, MicroBatcher, Reservation, allowed_batch_sizes
from service.batching.concurrency import (
    CostCurve,
    available_cores,
    choose_batch_size,
    choose_batch_threads,
    has_gpu,
    memory_limit_bytes,
    next_batch_fits,
    process_memory_bytes,
    reset_peak_memory,
    runs_remotely,
)
from service.batching.jobs import output_rows
from service.config import Settings
from service.errors import BackendTimeout, ModelNotReady, redact_paths
from service.models.signature import ModelInfo

_log = logging.getLogger(__name__)

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"


class RunResult(NamedTuple):
    """One request's images back from the batcher."""

    outputs: dict[str, NDArray[np.float32]]
    batch_ids: list[int]
    queue_s: float
    model_s: float


class ServableState(str, enum.Enum):
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


class Servable:
    """Load, warm up, serve through a batcher, and drain on unload."""

    def __init__(self, settings: Settings, backend: Backend, name: str, version_hint: int | None = None) -> None:
        self.settings = settings
        self.backend = backend
        self.name = name
        self.version_hint = version_hint
        self.state = ServableState.LOADING
        self.error: str | None = None
        self.info: ModelInfo | None = None
        self.batcher: MicroBatcher | None = None
        self.warmup_source = "none"
        self.batch_threads_reason = ""
        self.batch_size = settings.max_batch_size
        self.batch_size_reason = "configured (warm-up off)"

    @property
    def version(self) -> int | None:
        return self.info.version if self.info is not None else self.version_hint

    @property
    def available(self) -> bool:
        """AVAILABLE and, for a remote backend, its server reachable."""
        if self.state is not ServableState.AVAILABLE or not self.backend.reachable():
            return False
        return self.batcher is None or self.batcher.healthy()

    def load(self) -> ModelInfo:
        """Load and warm up; raises on failure (the manager decides whether to retry)."""
        started = time.monotonic()
        self.state = ServableState.LOADING
        curve = None
        try:
            info = self.backend.load()
            self.info = info
            if self.settings.warmup:
                curve = self._warm_up(info)
        except Exception as err:
            self.error = f"{type(err).__name__}: {err}"
            self.state = ServableState.END
            metrics.MODEL_LOADS.labels(self.name, str(self.version_hint or "unknown"), "failed").inc()
            raise
        limit = memory_limit_bytes()
        headroom = None if limit is None else int(0.85 * limit) - process_memory_bytes("VmHWM")
        threads, self.batch_threads_reason = choose_batch_threads(
            self.settings.batch_threads, self.backend.devices, curve, available_cores(), headroom,
            batch_size=self.batch_size if curve is not None else None)
        self.batcher = MicroBatcher(
            self._predict_named,
            policy=self.settings.batching,
            max_batch_size=self.batch_size,
            max_batch_delay_s=self.settings.max_batch_delay_ms / 1000,
            max_queue_size=self.settings.max_queue_size,
            target_latency_s=self.settings.target_latency_ms / 1000,
            pad_batches=self.settings.pad_to_allowed_batch_sizes,
            on_batch=self._observe_batch,
            on_queue_depth=metrics.QUEUE_DEPTH.labels(self.name).set,
            name=f"{self.name}-{info.version}",
            num_threads=threads,
            on_thread_restart=metrics.BATCHER_RESTARTS.labels(self.name).inc,
            max_background_queue_size=self.settings.jobs_max_queued_images,
        )
        self.error = None
        self.state = ServableState.AVAILABLE
        version = str(info.version)
        metrics.QUEUE_CAPACITY.labels(self.name).set(self.settings.max_queue_size)
        metrics.MODEL_LOADS.labels(self.name, version, "loaded").inc()
        metrics.MODEL_LOADED.labels(self.name, version).set(1)
        _log.info(
            "model version available",
            extra={"model": self.name, "version": info.version, "warmup": self.warmup_source,
                   "load_s": round(time.monotonic() - started, 3), "batching": self.batcher.describe()},
        )
        return info

    def _warm_up(self, info: ModelInfo) -> CostCurve:
        """Time one call of each power-of-two batch size (after a first, compiling call), choose
        the batch size from that cost curve (`choose_batch_size`), then run every other batch
        shape the batcher can form once: TF's first call per shape is ~10x slower.

        On a CPU the doubling stops once a batch no longer lowers the cost per image (larger ones
        would only raise the warm-up's time and memory peak), or before a batch predicted to need
        more than `batch_memory_bytes` of activations. Inputs come from TF Serving's
        `assets.extra/tf_serving_warmup_requests` when the version ships one, noise otherwise.
        """
        sample = self._recorded_warmup_inputs(info)
        self.warmup_source = "tf_serving_warmup_requests" if sample is not None else "synthetic"
        # The peak's growth from here is what the warm-up's calls needed: activations. Without a
        # reset, the peak so far (loading may have been higher) is the baseline: it undercounts.
        baseline = process_memory_bytes("VmRSS") if reset_peak_memory() else process_memory_bytes("VmHWM")

        def activation_bytes() -> int:
            return max(0, process_memory_bytes("VmHWM") - baseline)

        if sample is None:
            rng = np.random.default_rng(0)
            sample = rng.uniform(0, 4095, size=(1, info.height, info.width, info.channels)).astype(np.float32)
        on_cpu = not (runs_remotely(self.backend.devices) or has_gpu(self.backend.devices))
        seconds: dict[int, float] = {}
        stopped = ""
        sizes = allowed_batch_sizes(self.settings.max_batch_size)
        for size in sizes:
            seconds[size] = self._time_call(sample, size)
            if not (on_cpu and self.settings.auto_batch_size) or size == sizes[-1]:
                continue
            previous = size // 2
            if previous in seconds and seconds[size] / size > 0.95 * seconds[previous] / previous:
                stopped = f"stopped at {size}: the cost per image stopped falling"
                break
            grown = activation_bytes()
            if not next_batch_fits(grown, self.settings.batch_memory_bytes):
                stopped = (f"stopped at {size}: a batch of {size * 2} would need ~{grown * 2 / 2**20:.0f} MiB "
                           f"of activations, over SERVING_BATCH_MEMORY_BYTES "
                           f"({self.settings.batch_memory_bytes / 2**20:.0f} MiB)")
                break
        curve = CostCurve(seconds, activation_bytes(), stopped)  # the largest batch's activations
        self.batch_size, self.batch_size_reason = choose_batch_size(
            self.settings.max_batch_size, self.settings.auto_batch_size, self.backend.devices, curve)
        if self.settings.pad_to_allowed_batch_sizes:
            shapes = allowed_batch_sizes(self.batch_size)
        else:
            shapes = list(range(1, self.batch_size + 1))
        for size in shapes:
            if size not in seconds:
                self._call_checked(sample, size)
        explain = getattr(self.backend, "explain", None)
        if info.explain_signature is not None and explain is not None:
            explain(sample[:1])  # explanations run one request at a time: its first call pays the trace
        return curve

    def _call_checked(self, sample: NDArray[np.float32], size: int) -> float:
        """One call of `size` rows; its seconds."""
        batch = np.resize(sample, (size, *sample.shape[1:])).astype(np.float32)
        started = time.perf_counter()
        rows = output_rows(self._predict_named(batch))
        elapsed = time.perf_counter() - started
        if rows != size:
            raise RuntimeError(f"warm-up batch of {size} returned {rows} rows")
        return elapsed

    def _time_call(self, sample: NDArray[np.float32], size: int) -> float:
        """Best of two calls of `size`, after one that compiles the shape."""
        self._call_checked(sample, size)
        return min(self._call_checked(sample, size) for _ in range(2))

    def _recorded_warmup_inputs(self, info: ModelInfo) -> NDArray[np.float32] | None:
        record_file = info.path / WARMUP_FILE if info.path is not None else None
        if record_file is None or not record_file.is_file():
            return None
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        arrays = []
        for record in tf.data.TFRecordDataset(str(record_file)).take(16):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            tensor = log.predict_log.request.inputs.get(info.input_key)
            if tensor is not None:
                arrays.append(tf.make_ndarray(tensor).astype(np.float32))
        if not arrays:
            raise ValueError(f"{record_file} holds no PredictRequest for input '{info.input_key}'")
        return np.concatenate(arrays)

    def _predict_named(self, batch: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        """The backend's answer as named outputs (a bare array is the probabilities output)."""
        outputs = self.backend.predict(batch)
        if isinstance(outputs, dict):
            return outputs
        assert self.info is not None
        return {self.info.output_key: outputs}

    def reserve(self, images: int, background: bool = False) -> Reservation:
        """Claim room for a request's images in this version's batcher (see `MicroBatcher.reserve`).

        Raises:
            ModelNotReady: the version is not AVAILABLE (503).
            QueueFull: the images cannot fit in the queue now (503 + Retry-After).
        """
        batcher = self.batcher
        if not self.available or batcher is None:
            raise ModelNotReady(f"model '{self.name}' version {self.version} is not available")
        return batcher.reserve(images, background)

    def run(self, rows: NDArray[np.float32], reservation: Reservation, timeout_s: float) -> RunResult:
        """Send prepared images through the batcher; return their named outputs, batch ids and
        how long they waited in the queue and ran in the model.

        Raises:
            ModelNotReady: the version stopped being AVAILABLE since the reservation (503).
            QueueFull / ShuttingDown: shed or draining (503 + Retry-After).
            BackendTimeout: no answer within timeout_s (504); the images leave the queue.
        """
        if not self.available:
            raise ModelNotReady(f"model '{self.name}' version {self.version} is not available")
        job: BatchJob = reservation.submit(rows)
        try:
            outputs = job.future.result(timeout=max(timeout_s, 0.001))
            assert isinstance(outputs, dict), "the servable's batcher runs _predict_named"
            queue_s = (job.first_batch_at or job.enqueued_at) - job.enqueued_at
            return RunResult(outputs, job.batch_ids, queue_s, job.model_s)
        except TimeoutError as err:
            reservation.batcher.abandon(job)
            raise BackendTimeout(
                f"no answer within {self.settings.request_timeout_s:g} s "
                f"({len(rows)} images, {reservation.batcher.queued_images} queued)"
            ) from err

    def unload(self, timeout_s: float | None = None) -> None:
        """Stop taking work, answer everything already queued, then release the model."""
        if self.state is ServableState.END and self.batcher is None:
            return
        self.state = ServableState.UNLOADING
        if self.batcher is not None:
            self.batcher.close(timeout_s)
        self.backend.close()
        if self.info is not None:
            metrics.MODEL_LOADED.labels(self.name, str(self.info.version)).set(0)
        self.state = ServableState.END

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "state": self.state.value,
            "error": redact_paths(self.error) if self.error else None,
            "warmup": self.warmup_source,
            "batching": ({**self.batcher.describe(), "batch_threads_chosen_by": self.batch_threads_reason,
                          "batch_size_chosen_by": self.batch_size_reason}
                         if self.batcher is not None else None),
        }

    def _observe_batch(self, report: BatchReport) -> None:
        version = str(self.version)
        metrics.BATCH_SIZE.labels(self.name).observe(report.size)
        metrics.MODEL_LATENCY.labels(self.name, version, self.backend.name).observe(report.run_s)
        for wait_s in report.queue_wait_s:
            metrics.QUEUE_WAIT.labels(self.name).observe(wait_s)
        if report.failed:
            metrics.BATCH_FAILURES.labels(self.name).inc()
