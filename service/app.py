"""`create_app`: wiring of settings, backend, routes, error handlers and request logging."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, request

from service import metrics
from service.api import health, predict, tfserving, v2
from service.backends import Backend
from service.config import Settings
from service.errors import register_error_handlers
from service.logs import configure_logging
from service.models import ModelManager
from service.openapi import TEXT, docs_view, document, openapi_view

_access_log = logging.getLogger("service.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> Flask:
    """Build the app for one worker; models load in the background (see /readyz).

    `backend` injects one ready-made backend (tests, or a caller's own); otherwise the settings
    choose the embedded repository or TF Serving over gRPC.
    """
    settings = settings or Settings()
    configure_logging(settings.log_level)
    app = Flask(__name__)
    # Flask refuses larger bodies with 413 before reading them.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    manager = ModelManager(settings, backend)
    app.extensions["serving"] = manager
    register_error_handlers(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(predict.bp)
    app.register_blueprint(tfserving.bp)
    app.register_blueprint(v2.bp)
    app.add_url_rule(
        "/metrics", "metrics",
        document("Prometheus metrics", tag="health", responses={200: TEXT}, response_media="text/plain")(
            metrics.metrics_view),
    )
    app.add_url_rule("/openapi.json", "openapi", openapi_view)
    app.add_url_rule("/docs", "docs", docs_view)
    _install_request_hooks(app, settings.model_name)
    manager.start()
    return app


def _install_request_hooks(app: Flask, model_name: str) -> None:
    @app.before_request
    def _start_request() -> None:
        g.started = time.monotonic()
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex

    @app.after_request
    def _finish_request(response: Response) -> Response:
        latency_s = time.monotonic() - g.get("started", time.monotonic())
        route = request.url_rule.rule if request.url_rule else "unmatched"
        response.headers["X-Request-ID"] = g.get("request_id", "")
        model = g.get("model") or model_name
        if route != "/metrics":
            metrics.REQUESTS.labels(model, route, metrics.status_class(response.status_code)).inc()
            metrics.REQUEST_LATENCY.labels(model, route).observe(latency_s)
            if g.get("error_code"):
                metrics.REJECTIONS.labels(model, g.error_code).inc()
        _access_log.info(
            "request",
            extra={
                "request_id": g.get("request_id"),
                "method": request.method,
                "route": route,
                "status": response.status_code,
                "latency_ms": round(latency_s * 1000, 2),
                "images": g.get("images", 0),
                "batch_ids": g.get("batch_ids", []),
                "error_code": g.get("error_code"),
            },
        )
        return response
