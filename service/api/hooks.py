"""Around every request: the request id, the JSON access log line, and request metrics."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, request

from service import metrics, tracing
from service.api.common import get_manager
from service.read_deadline import queued_at

_access_log = logging.getLogger("service.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def install_request_hooks(app: Flask, default_model: str) -> None:
    """Take or make an `X-Request-ID`, then count, time and log each answered request."""

    @app.before_request
    def _start_request() -> None:
        g.started = time.monotonic()
        # Under Gunicorn, time spent waiting for a free thread counts against the request too.
        g.accepted_at = queued_at(request.environ.get("gunicorn.socket")) or g.started
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex

    @app.after_request
    def _finish_request(response: Response) -> Response:
        latency_s = time.monotonic() - g.get("started", time.monotonic())
        route = request.url_rule.rule if request.url_rule else "unmatched"
        response.headers["X-Request-ID"] = g.get("request_id", "")
        stages = {name: round(seconds * 1000, 2) for name, seconds in g.get("timings_s", {}).items()}
        if stages:
            # W3C Server-Timing: browsers' dev tools and the benchmark read where the time went.
            stages["total"] = round(latency_s * 1000, 2)
            response.headers["Server-Timing"] = ", ".join(f"{name};dur={ms}" for name, ms in stages.items())
        model = _model_label(g.get("model"), default_model)
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
                "model": model,
                "model_version": g.get("model_version"),
                "client": request.remote_addr,
                "user_agent": request.user_agent.string[:200] or None,
                "latency_ms": round(latency_s * 1000, 2),
                "stages_ms": stages or None,
                "images": g.get("images", 0),
                "batch_ids": g.get("batch_ids", []),
                "samples": g.get("samples"),  # plate/well/site...: in logs, never metric labels
                "error_code": g.get("error_code"),
            },
        )
        return response


def _model_label(requested: str | None, default_model: str) -> str:
    """The model a request is counted under: a served model's name, or "unknown".

    Names come from URLs and query strings; as metric labels they would let any client create
    series (and multiprocess files) without bound, so only names of served models pass.
    """
    if requested is None or requested == default_model:
        return default_model
    return requested if requested in get_manager().model_names() else metrics.UNKNOWN_MODEL


def install_request_spans(app: Flask) -> None:
    """A server span per request, continuing the caller's W3C `traceparent`; nothing when off."""
    tracer = tracing.tracer()
    if tracer is None:
        return
    from opentelemetry import context, trace
    from opentelemetry.propagate import extract

    @app.before_request
    def _start_span() -> None:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        span = tracer.start_span(f"{request.method} {route}", context=extract(request.headers),
                                 kind=trace.SpanKind.SERVER,
                                 attributes={"http.request.method": request.method, "http.route": route,
                                             "url.path": request.path, "client.address": request.remote_addr or ""})
        g.trace_span = span
        g.trace_token = context.attach(trace.set_span_in_context(span))

    @app.after_request
    def _status(response: Response) -> Response:
        span = g.get("trace_span")
        if span is not None:
            span.set_attribute("http.response.status_code", response.status_code)
            span.set_attribute("request.id", g.get("request_id", ""))
            if response.status_code >= 500:
                span.set_status(trace.StatusCode.ERROR)
        return response

    @app.teardown_request
    def _end_span(_: BaseException | None) -> None:
        span, token = g.pop("trace_span", None), g.pop("trace_token", None)
        if span is not None:
            span.end()
        if token is not None:
            context.detach(token)
