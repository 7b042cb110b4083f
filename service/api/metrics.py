"""GET /metrics: every worker's metrics in Prometheus text format."""

from __future__ import annotations

import os

from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from service.api.errors import error_response


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


def install_metrics_port(app: Flask, metrics_port: int | None) -> None:
    """With a metrics port, /metrics answers there only, and that port answers nothing else."""
    if metrics_port is None:
        return

    @app.before_request
    def _split_ports() -> Response | None:
        on_metrics_port = request.environ.get("SERVER_PORT") == str(metrics_port)
        if (request.path == "/metrics") != on_metrics_port:
            return error_response(404, "not_found", f"{request.path} is not served on this port")
        return None
