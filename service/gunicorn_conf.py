"""Gunicorn settings: gthread workers, multiprocess metrics, graceful drain on SIGTERM.

Run: `gunicorn -c python:service.gunicorn_conf "service.app:create_app()"`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

# NOTE: must be set before anything imports prometheus_client, which picks its value store
# (per-process mmap files) at import time; workers inherit it through the fork. Hence no
# `service` import above this block (service/__init__.py imports nothing eagerly either).
if "prometheus_client" in sys.modules and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    raise SystemExit("prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set: /metrics would be empty")
_made_metrics_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
_metrics_dir = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), f"serving-metrics-{os.getpid()}")
)
shutil.rmtree(_metrics_dir, ignore_errors=True)  # stale files from a previous run would be summed
os.makedirs(_metrics_dir, exist_ok=True)
if not os.access(_metrics_dir, os.W_OK):
    # Every request would fail with 500 later: refuse to start with the reason instead.
    raise SystemExit(f"PROMETHEUS_MULTIPROC_DIR={_metrics_dir} is not writable by uid {os.getuid()}")

from service.config import ServerSettings  # after the metrics directory, see above
from service.logs import NativeStderr, gunicorn_logconfig

_server = ServerSettings()

# TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX512-VNNI, AVX-VNNI or AMX;
# elsewhere (an AVX2 EPYC, say) convolutions run on Eigen, 4-8x slower for the paper CNN (batch
# 8 of 1360x1024 fields: 5.4 s against 0.7 s on 2 cores). Workers import TensorFlow after the
# fork, so setting it here is early enough; an explicit value in the environment wins. Memory:
# oneDNN's tensors come from a pool that keeps its peak for life, so the batch size is bounded by
# SERVING_BATCH_MEMORY_BYTES at warm-up (the system allocator, TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1,
# returns memory between calls but cost 42% of the throughput at batch 2 for a similar peak).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
bind = [f"{_server.host}:{_server.port}"]
if _server.metrics_port is not None:
    bind.append(f"{_server.host}:{_server.metrics_port}")
# Requests are read whole by the worker's event loop before they get a thread, within one read
# deadline (SERVING_REQUEST_READ_TIMEOUT_S): slow or stalled clients get 408 and hold no thread.
worker_class = "service.gunicorn_worker.DeadlineThreadWorker"
workers = _server.workers
threads = _server.threads
timeout = _server.worker_timeout_s
graceful_timeout = _server.graceful_timeout_s
keepalive = 5
# The app (TensorFlow runtime, batcher thread, gRPC channel) is created in each worker after the
# fork: neither threads nor TF state survive fork safely.
preload_app = False
accesslog = None  # the app writes its own JSON access log with request ids
errorlog = "-"
# Every line the process writes is one JSON object: Gunicorn's own loggers too.
logconfig_dict = gunicorn_logconfig(os.environ.get("SERVING_LOG_LEVEL", "INFO"),
                                    os.environ.get("SERVING_LOG_LEVELS", ""))
_native_stderr: NativeStderr | None = None


def post_fork(server: Any, worker: Any) -> None:
    """Route the worker's fd 2 through the JSON wrapper before TensorFlow's C++ code writes there."""
    global _native_stderr
    _native_stderr = NativeStderr()


def worker_exit(server: Any, worker: Any) -> None:
    """Drain the worker's batchers so accepted images are answered before the process ends."""
    app = getattr(worker, "wsgi", None)
    extensions = getattr(app, "extensions", {}) if app is not None else {}
    jobs = extensions.get("serving.jobs")
    if jobs is not None:  # first: its items in hand go back to the queue for another worker
        jobs.close(timeout_s=_server.graceful_timeout_s / 2)
    manager = extensions.get("serving")
    if manager is not None:
        manager.close(timeout_s=_server.graceful_timeout_s)
    if _native_stderr is not None:
        _native_stderr.close()


def on_exit(server: Any) -> None:
    """Remove the metrics directory this config made (one per run would pile up in /tmp)."""
    if _made_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)


def child_exit(server: Any, worker: Any) -> None:
    """Drop the dead worker's live gauges from the aggregated metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
