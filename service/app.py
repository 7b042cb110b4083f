"""`create_app`: wiring of settings, models, pipeline, routes, error handlers and hooks; no logic."""

from __future__ import annotations

from flask import Flask

from service import metrics, tracing
from service.api import health, jobs, open_inference, predict, tfserving
from service.api.auth import install_authentication
from service.api.body import install_body_reader
from service.api.common import EXTENSION, PIPELINE_EXTENSION
from service.api.docs import install_docs
from service.api.errors import register_error_handlers
from service.api.hooks import install_request_hooks, install_request_spans
from service.api.json_provider import OrjsonProvider
from service.api.metrics import install_metrics_port, metrics_view
from service.api.openapi import TEXT, document, openapi_view
from service.backends import Backend
from service.config import Settings
from service.jobs import install_jobs
from service.logs import configure_logging
from service.models import ModelManager
from service.pipeline import Pipeline


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> Flask:
    """Build the app for one worker; models load in the background (see /readyz).

    `backend` injects one ready-made backend (tests, or a caller's own); otherwise the settings
    choose the embedded repository or TF Serving over gRPC.
    """
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_levels)
    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    # Flask refuses larger bodies with 413 before reading them.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    manager = ModelManager(settings, backend)
    app.extensions[EXTENSION] = manager
    app.extensions[PIPELINE_EXTENSION] = Pipeline(settings, manager)
    register_error_handlers(app)
    for blueprint in (health.bp, predict.bp, tfserving.bp, open_inference.bp, jobs.bp):
        app.register_blueprint(blueprint)
    app.add_url_rule(
        "/metrics", "metrics",
        document("Prometheus metrics", tag="health", responses={200: TEXT}, response_media="text/plain")(metrics_view),
    )
    app.add_url_rule("/openapi.json", "openapi", openapi_view)
    install_docs(app)
    install_request_hooks(app, settings.model_name)
    tracing.configure()  # OTEL_* variables; off (and never imported) unless they ask
    install_request_spans(app)
    metrics.publish_build_info(settings.backend if backend is None else backend.name)
    install_metrics_port(app, settings.metrics_port)
    # In this order: an unauthenticated client is refused before its body is read.
    install_authentication(app, settings)
    install_body_reader(app, settings.max_body_bytes)
    manager.start()
    # After the fork (preload_app is off): each worker has its own connection pool and runner.
    install_jobs(app, settings)
    return app
