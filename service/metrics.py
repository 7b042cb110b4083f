"""Prometheus metrics, defined once at module level (served by `service.api.metrics`).

Under Gunicorn every worker writes to `PROMETHEUS_MULTIPROC_DIR` and `/metrics` aggregates
them (client_python's multiprocess mode); without it the default registry is used. Labels stay
low-cardinality: model, version, route, status class, reason.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import prometheus_client
from prometheus_client import Counter, Gauge, Histogram

REGISTRY = prometheus_client.REGISTRY

UNKNOWN_MODEL = "unknown"
"""The `model` label of requests for a model that is not served (labels stay a closed set)."""
"""The registry these metrics are registered in (read directly without multiprocess mode)."""

# Latency buckets from 1 ms to 60 s: a batch of 1360x1024 images on CPU takes seconds.
_LATENCY_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
# Batch sizes 1, 2, 4, ... 512: every power of two a max_batch_size setting can reach.
_BATCH_SIZE_BUCKETS = tuple(float(1 << bit) for bit in range(10))
_CONFIDENCE_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)

REQUESTS = Counter(
    "serving_requests_total", "HTTP requests answered.", ["model", "route", "status_class"]
)
REQUEST_LATENCY = Histogram(
    "serving_request_latency_seconds", "Time from request to response.", ["model", "route"],
    buckets=_LATENCY_BUCKETS_S,
)
IMAGES = Counter("serving_images_total", "Images classified.", ["model", "version"])
REJECTIONS = Counter(
    "serving_rejections_total", "Requests refused, by reason (error code).", ["model", "reason"]
)
DECODE_LATENCY = Histogram(
    "serving_decode_latency_seconds", "Decoding and preparing one request's images.", ["model"],
    buckets=_LATENCY_BUCKETS_S,
)
BATCH_SIZE = Histogram(
    "serving_batch_size_images", "Images per model call (before padding).", ["model"],
    buckets=_BATCH_SIZE_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "serving_queue_wait_seconds", "Time a request's images waited for their batch.", ["model"],
    buckets=_LATENCY_BUCKETS_S,
)
MODEL_LATENCY = Histogram(
    "serving_model_latency_seconds", "Duration of one model call (one batch).",
    ["model", "version", "backend"], buckets=_LATENCY_BUCKETS_S,
)
EXPLAIN_LATENCY = Histogram(
    "serving_explain_latency_seconds", "Computing one request's Grad-CAM maps (outside the batcher).",
    ["model"], buckets=_LATENCY_BUCKETS_S,
)
BATCH_FAILURES = Counter("serving_batch_failures_total", "Model calls that raised.", ["model"])
BATCHER_RESTARTS = Counter(
    "serving_batcher_restarts_total", "Batcher threads that died and were restarted.", ["model"]
)
QUEUE_DEPTH = Gauge(
    "serving_queue_depth_images", "Images waiting for a batch, summed over workers.", ["model"],
    multiprocess_mode="livesum",
)
QUEUE_CAPACITY = Gauge(
    "serving_queue_capacity_images", "max_queue_size, summed over workers (saturation = depth/capacity).",
    ["model"], multiprocess_mode="livesum",
)
MODEL_LOADS = Counter(
    "serving_model_loads_total", "Model version load attempts by outcome.",
    ["model", "version", "outcome"],
)
MODEL_LOADED = Gauge(
    "serving_model_loaded", "1 while a worker serves this version (max over workers).",
    ["model", "version"], multiprocess_mode="livemax",
)
READY = Gauge(
    "serving_ready", "1 when the worker's model is loaded and warmed up (min over workers).",
    ["model"], multiprocess_mode="livemin",
)
PREDICTIONS = Counter(
    "serving_predictions_total", "Predicted labels, per model version: the drift signal.",
    ["model", "version", "label"],
)
QC_OUTCOMES = Counter(
    "serving_qc_outcomes_total", "Images by quality/out-of-distribution gate status.", ["model", "version", "status"],
)
QC_REASONS = Counter(
    "serving_qc_reasons_total", "Gate flags (warn or reject) by reason.", ["model", "version", "reason"],
)
CONFIDENCE = Histogram(
    "serving_prediction_confidence", "Probability of the predicted label.", ["model", "version"],
    buckets=_CONFIDENCE_BUCKETS,
)


def status_class(status_code: int) -> str:
    """'2xx', '4xx', ...: keeps the requests counter's cardinality fixed."""
    return f"{status_code // 100}xx"
PREPROCESSING_SKEW = Gauge(
    "serving_preprocessing_skew",
    "1 when a loaded version was trained with another preprocessing version than the service runs.",
    ["model", "version"], multiprocess_mode="livemax",
)
BUILD_INFO = Gauge(
    "serving_build_info", "1 per running build: which release a pod runs.",
    ["version", "git_sha", "tensorflow", "python", "backend"], multiprocess_mode="livemax",
)


def _git_sha() -> str:
    """SERVING_GIT_SHA (set when the image is built), else the checkout's HEAD, else unknown."""
    if os.environ.get("SERVING_GIT_SHA"):
        return os.environ["SERVING_GIT_SHA"][:12]
    root = Path(__file__).resolve().parent.parent
    if (root / ".git").exists():
        try:
            done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                                  capture_output=True, text=True, timeout=5, check=False)
            if done.returncode == 0:
                return done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return "unknown"


def _tensorflow_version() -> str:
    for distribution in ("tensorflow-cpu", "tensorflow", "tensorflow-serving-api"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return "none"


def publish_build_info(backend: str) -> None:
    """Set serving_build_info (one series per running build)."""
    from service import __version__

    BUILD_INFO.labels(__version__, _git_sha(), _tensorflow_version(), platform.python_version(), backend).set(1)
