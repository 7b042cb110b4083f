"""Per-app serving state: the backend, its batcher, and the load -> warm-up -> ready lifecycle.

One `ServingState` lives in `app.extensions["serving"]` of each worker. The model loads in a
background thread so `/healthz` answers during a slow load and `/readyz` turns true only after
a warm-up call at every batch size the batcher can produce has succeeded.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
from flask import current_app
from numpy.typing import NDArray

from service import metrics
from service.backends import Backend
from service.batching import BatchJob, BatchReport, MicroBatcher, allowed_batch_sizes
from service.config import Settings
from service.errors import BackendTimeout, ModelNotReady
from service.repository import ModelInfo

_log = logging.getLogger(__name__)


class ServingState:
    """Owns one model version in this worker and the batcher in front of it."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings = settings
        self.backend = backend
        self.info: ModelInfo | None = None
        self.batcher: MicroBatcher | None = None
        self.load_error: str | None = None
        self._ready = threading.Event()
        self._closed = threading.Event()
        self._loader: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Load and warm up in the background; /readyz reports when done."""
        self._loader = threading.Thread(target=self._load, name="model-loader", daemon=True)
        self._loader.start()

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Block until ready (tests, CLI); False on timeout."""
        return self._ready.wait(timeout_s)

    @property
    def ready(self) -> bool:
        """Loaded, warmed up, and the model server (if remote) reachable."""
        reachable = getattr(self.backend, "reachable", None)
        return self._ready.is_set() and (reachable is None or reachable())

    def _load(self) -> None:
        """Load, retrying with backoff: a model server that is down at start is waited for."""
        pause_s = 0.5
        while not self._closed.is_set():
            if self._load_once():
                return
            self._closed.wait(pause_s)
            pause_s = min(pause_s * 2, self.settings.load_retry_max_s)

    def _load_once(self) -> bool:
        name = self.settings.model_name
        started = time.monotonic()
        metrics.READY.labels(name).set(0)
        try:
            info = self.backend.load()
            self.info = info
            if self.settings.warmup:
                self._warm_up(info)
        except Exception as err:  # noqa: BLE001 - a failed load is reported, never raised
            self.load_error = f"{type(err).__name__}: {err}"
            metrics.MODEL_LOADS.labels(name, str(self.settings.model_version or "latest"), "failed").inc()
            _log.error("model %s failed to load: %s", name, self.load_error)
            return False
        self.load_error = None
        version = str(info.version)
        self.batcher = MicroBatcher(
            self.backend.predict,
            policy=self.settings.batching,
            max_batch_size=self.settings.max_batch_size,
            max_batch_delay_s=self.settings.max_batch_delay_ms / 1000,
            max_queue_size=self.settings.max_queue_size,
            target_latency_s=self.settings.target_latency_ms / 1000,
            pad_batches=self.settings.pad_to_allowed_batch_sizes,
            on_batch=self._observe_batch,
            on_queue_depth=metrics.QUEUE_DEPTH.labels(name).set,
            name=name,
        )
        metrics.QUEUE_CAPACITY.labels(name).set(self.settings.max_queue_size)
        metrics.MODEL_LOADS.labels(name, version, "loaded").inc()
        metrics.MODEL_LOADED.labels(name, version).set(1)
        metrics.READY.labels(name).set(1)
        self._ready.set()
        _log.info(
            "model ready",
            extra={"model": name, "version": info.version, "load_s": round(time.monotonic() - started, 3),
                   "batching": self.batcher.describe()},
        )
        return True

    def _warm_up(self, info: ModelInfo) -> None:
        """Run each batch shape once: TF/oneDNN's first call per shape is ~10x slower."""
        if self.settings.pad_to_allowed_batch_sizes:
            sizes = allowed_batch_sizes(self.settings.max_batch_size)
        else:
            sizes = list(range(1, self.settings.max_batch_size + 1))
        rng = np.random.default_rng(0)
        sample = rng.uniform(0, 4095, size=(1, info.height, info.width, info.channels))
        for size in sizes:
            started = time.monotonic()
            out = self.backend.predict(np.repeat(sample.astype(np.float32), size, axis=0))
            if out.shape[0] != size:
                raise RuntimeError(f"warm-up batch of {size} returned {out.shape[0]} rows")
            _log.debug("warm-up batch %d took %.3f s", size, time.monotonic() - started)

    def close(self, timeout_s: float | None = None) -> None:
        """Drain the batcher and release the backend (worker exit, test teardown)."""
        self._closed.set()
        if self.batcher is not None:
            self.batcher.close(timeout_s)
        self.backend.close()

    # --- request path ---------------------------------------------------------------------------

    def require_ready(self) -> tuple[ModelInfo, MicroBatcher]:
        """The loaded model and its batcher, or 503 while loading or after a failed load."""
        if not self.ready or self.info is None or self.batcher is None:
            reason = f" (load failed: {self.load_error})" if self.load_error else ""
            raise ModelNotReady(f"model '{self.settings.model_name}' is not ready{reason}")
        return self.info, self.batcher

    def run(self, rows: NDArray[np.float32], waited_s: float = 0.0) -> tuple[NDArray[np.float32], list[int]]:
        """Send prepared images through the batcher; return their outputs and batch ids.

        Raises:
            QueueFull: the queue is full (503 + Retry-After).
            BackendTimeout: no answer within request_timeout_s (504); its queued images leave.
        """
        _, batcher = self.require_ready()
        job: BatchJob = batcher.submit(rows)
        remaining_s = max(self.settings.request_timeout_s - waited_s, 0.001)
        try:
            return job.future.result(timeout=remaining_s), job.batch_ids
        except TimeoutError as err:
            batcher.abandon(job)
            raise BackendTimeout(
                f"no answer within {self.settings.request_timeout_s:g} s "
                f"({len(rows)} images, {batcher.queued_images} queued)"
            ) from err

    def describe(self) -> dict[str, Any]:
        """Model, backend and batching status for /v1/status-style routes."""
        return {
            "ready": self.ready,
            "load_error": self.load_error,
            "backend": self.backend.name,
            "devices": getattr(self.backend, "devices", []),
            "model": self.info.describe() if self.info else {"name": self.settings.model_name},
            "batching": self.batcher.describe() if self.batcher else None,
        }

    def _observe_batch(self, report: BatchReport) -> None:
        name = self.settings.model_name
        version = str(self.info.version) if self.info else "unknown"
        metrics.BATCH_SIZE.labels(name).observe(report.size)
        metrics.MODEL_LATENCY.labels(name, version, self.backend.name).observe(report.run_s)
        for wait_s in report.queue_wait_s:
            metrics.QUEUE_WAIT.labels(name).observe(wait_s)
        if report.failed:
            metrics.BATCH_FAILURES.labels(name).inc()


def get_state() -> ServingState:
    """The current app's ServingState (flaskr's `get_db()` pattern)."""
    state: ServingState = current_app.extensions["serving"]
    return state
