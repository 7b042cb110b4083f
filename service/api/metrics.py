"""GET /metrics: every worker's metrics in Prometheus text format."""

from __future__ import annotations

import os

from flask import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess


def _registry() -> CollectorRegistry:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        # NOTE: a fresh registry per scrape, as client_python's multiprocess docs require.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def metrics_view() -> Response:
    """GET /metrics in Prometheus text format."""
    # content_type, not mimetype: CONTENT_TYPE_LATEST carries its charset already.
    return Response(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)
