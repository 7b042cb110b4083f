"""Optional OpenTelemetry tracing along the request path: request -> decode -> queue -> model -> gRPC.

Switched on by the standard variables: `OTEL_TRACES_EXPORTER=otlp` (or `console`, or both,
comma-separated), unless `OTEL_SDK_DISABLED=true`; `OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_EXPORTER_OTLP_*` and `OTEL_BSP_*`
are read by the SDK itself. Unlike the SDK's default (otlp), an unset exporter means off: a
service must not start sending spans to localhost:4317 because nobody said otherwise. Off, no
OpenTelemetry module is imported and every hook below is a shared no-op context.

The batcher joins several requests into one model call: the call's span is a child of the
first request's span and links the others; each request also gets its own `queue` span (from
enqueue to the start of its first batch). The gRPC client span carries the W3C `traceparent`
to TF Serving in the call's metadata.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

    from service.batching.jobs import BatchJob

_OFF: AbstractContextManager[None] = contextlib.nullcontext()
_tracer: Tracer | None = None
_explicit = False  # set by use_provider: create_app's configure() leaves it alone


def wanted(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the OTEL_* variables ask for traces."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {name.strip().lower() for name in env.get("OTEL_TRACES_EXPORTER", "").split(",")}
    return bool(exporters - {"", "none"})


def _provider_from_env(env: Mapping[str, str]) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    from service import __version__

    resource = Resource.create({"service.version": __version__})
    if "OTEL_SERVICE_NAME" not in env and "service.name=" not in env.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        resource = resource.merge(Resource.create({"service.name": "cpe-serving"}))
    provider = TracerProvider(resource=resource)
    for name in filter(None, (part.strip().lower() for part in env.get("OTEL_TRACES_EXPORTER", "").split(","))):
        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        elif name == "console":
            # One JSON object per line, like the logs (the SDK's default is indented over many).
            exporter = ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
        elif name == "none":
            continue
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter '{name}' (otlp, console or none)")
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def configure(env: Mapping[str, str] = os.environ) -> bool:
    """Turn tracing on or off for this process as `env` says, unless `use_provider` chose.

    Called by create_app, so in each Gunicorn worker after the fork: the span processor's
    export thread would not survive a fork.
    """
    global _tracer
    if not _explicit:
        _tracer = _provider_from_env(env).get_tracer("service") if wanted(env) else None
    return _tracer is not None


def use_provider(provider: TracerProvider | None) -> None:
    """Trace into `provider` whatever the environment says (tests, embedding); None: back to env."""
    global _tracer, _explicit
    _explicit = provider is not None
    _tracer = provider.get_tracer("service") if provider is not None else None


def tracer() -> Tracer | None:
    """The process's tracer; None while tracing is off."""
    return _tracer


def span(name: str, client: bool = False, **attributes: Any) -> AbstractContextManager[Any]:
    """A child span of the current one (`client`: an outgoing call); a shared no-op when off."""
    if _tracer is None:
        return _OFF
    from opentelemetry.trace import SpanKind

    return _tracer.start_as_current_span(name, kind=SpanKind.CLIENT if client else SpanKind.INTERNAL,
                                         attributes=attributes)


def current_context() -> object | None:
    """The caller's trace context, to carry to the batcher thread (None when off)."""
    if _tracer is None:
        return None
    from opentelemetry import context

    return context.get_current()


def _wall_ns(monotonic_s: float) -> int:
    """A time.monotonic() instant as the epoch nanoseconds spans are stamped with."""
    return time.time_ns() - int((time.monotonic() - monotonic_s) * 1e9)


@contextlib.contextmanager
def _batch_span(tracer: Tracer, jobs: Sequence[BatchJob], started: float, attributes: dict[str, Any]) -> Iterator[None]:
    from opentelemetry import trace

    contexts = [job.trace_context for job in jobs if job.trace_context is not None]
    for job in jobs:
        if job.first_batch_at is None and job.trace_context is not None:  # its first batch: the wait ends
            tracer.start_span("queue", context=job.trace_context,  # type: ignore[arg-type]
                              start_time=_wall_ns(job.enqueued_at)).end(_wall_ns(started))
    parent = contexts[0] if contexts else None
    links = [trace.Link(trace.get_current_span(other).get_span_context())  # type: ignore[arg-type]
             for other in contexts[1:]]
    with tracer.start_as_current_span("model", context=parent, links=links,  # type: ignore[arg-type]
                                      attributes=attributes):
        yield


def batch_span(jobs: Sequence[BatchJob], started: float, **attributes: Any) -> AbstractContextManager[Any]:
    """Around one model call: a `queue` span for each job starting its first batch, then the
    `model` span (child of the first job's request, linked to the others')."""
    if _tracer is None:
        return _OFF
    return _batch_span(_tracer, jobs, started, attributes)


def grpc_metadata() -> list[tuple[str, str]] | None:
    """The current span's W3C trace context as gRPC metadata (`traceparent`, `tracestate`)."""
    if _tracer is None:
        return None
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return list(carrier.items())
