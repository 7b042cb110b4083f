"""OpenTelemetry spans along the request path, collected by the SDK's in-memory exporter: the
request (continuing the caller's traceparent), decode, queue wait and the model call; and the
W3C traceparent that a real gRPC server (the TF Serving stand-in) receives in its metadata."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service import create_app, tracing
from service.config import Settings
from tests.conftest import tiff_bytes
from tests.fakes import FakeBackend
from tests.models import export_tiny_model
from tests.tfserving_standin import serve

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TIFF = {"Content-Type": "image/tiff"}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)


def _one(finished: list[ReadableSpan], name: str) -> ReadableSpan:
    matches = [span for span in finished if span.name == name]
    assert len(matches) == 1, [span.name for span in finished]
    return matches[0]


def test_off_unless_the_otel_variables_ask() -> None:
    assert not tracing.wanted({})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"})
    assert not tracing.configure({}) and tracing.tracer() is None
    assert tracing.span("decode") is tracing.span("model")  # one shared no-op, nothing allocated
    assert tracing.grpc_metadata() is None and tracing.current_context() is None
    with pytest.raises(ValueError, match="unknown exporter"):
        tracing.configure({"OTEL_TRACES_EXPORTER": "zipkin-typo"})
    assert tracing.configure({"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "lab-7"})
    tracing.configure({})
    assert tracing.tracer() is None


def test_request_decode_queue_and_model_spans_with_parents_and_links(spans: InMemorySpanExporter) -> None:
    # The first request's batch is held in the model on a gate while two more queue up; released,
    # those two run as one model call. The gate makes the batching deterministic, not timing.
    gate = threading.Event()
    app = create_app(Settings(model_name="fake", max_batch_size=2, batch_threads=1, warmup=False),
                     FakeBackend(gate=gate))
    manager = app.extensions["serving"]
    image = tiff_bytes(np.zeros((32, 32), np.uint16))
    traced = {**TIFF, "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
    try:
        assert manager.wait_ready(10)
        batcher = manager.get("fake").batcher
        assert batcher is not None
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(lambda: app.test_client().post("/predict", data=image, headers=TIFF).status_code)
            # Its `queue` span ends when its batch starts: the model call is then held on the gate.
            _wait_for(lambda: any(span.name == "queue" for span in spans.get_finished_spans()))
            later = [pool.submit(lambda h=h: app.test_client().post("/predict", data=image, headers=h).status_code)
                     for h in (traced, TIFF)]
            _wait_for(lambda: batcher.queued_images == 2)
            gate.set()
            assert [first.result(), *(f.result() for f in later)] == [200, 200, 200]
    finally:
        gate.set()
        manager.close()
    finished = list(spans.get_finished_spans())
    requests = [span for span in finished if span.name == "POST /predict"]
    assert len(requests) == 3
    continued = [span for span in requests if span.context.trace_id == int(CALLER_TRACE, 16)]
    assert len(continued) == 1  # the caller's trace goes on through the service
    assert continued[0].parent is not None and continued[0].parent.span_id == int(CALLER_SPAN, 16)
    assert continued[0].attributes["http.response.status_code"] == 200
    for request in requests:
        children = {span.name for span in finished if span.parent and span.parent.span_id == request.context.span_id}
        assert {"decode", "queue"} <= children
    models = [span for span in finished if span.name == "model"]
    assert sorted(span.attributes["images"] for span in models) == [1, 2]
    joint = next(span for span in models if span.attributes["images"] == 2)
    # One model call for two requests: the child of one, linked to the other.
    first_id = next(span.context.span_id for span in requests if span.start_time == min(r.start_time for r in requests))
    later_ids = {span.context.span_id for span in requests} - {first_id}
    alone = next(span for span in models if span.attributes["images"] == 1)
    assert alone.parent is not None and alone.parent.span_id == first_id and not alone.links
    assert joint.parent is not None and joint.parent.span_id in later_ids
    assert {link.context.span_id for link in joint.links} == later_ids - {joint.parent.span_id}


def _wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_traceparent_reaches_tf_serving_in_grpc_metadata(spans: InMemorySpanExporter, tmp_path: Path) -> None:
    export_tiny_model(tmp_path, "tiny", 1)
    server, standin = serve(tmp_path, 0)
    app = create_app(Settings(backend="tfserving_grpc", tfserving_target=f"127.0.0.1:{standin.port}",  # type: ignore[attr-defined]
                              model_name="tiny", model_repository=tmp_path, warmup=False))
    manager = app.extensions["serving"]
    try:
        assert manager.wait_ready(30), manager.not_ready_reason()
        answer = app.test_client().post("/predict", data=tiff_bytes(np.zeros((32, 40), np.uint16)), headers=TIFF)
        assert answer.status_code == 200, answer.json
    finally:
        manager.close()
        server.stop(0)
    finished = list(spans.get_finished_spans())
    call = _one(finished, "tensorflow.serving/Predict")
    model = _one(finished, "model")
    request = _one(finished, "POST /predict")
    assert call.parent is not None and call.parent.span_id == model.context.span_id
    assert model.parent is not None and model.parent.span_id == request.context.span_id
    received = standin.predict_metadata[-1]["traceparent"]
    flags = int(call.context.trace_flags)
    assert received == f"00-{call.context.trace_id:032x}-{call.context.span_id:016x}-{flags:02x}" and flags & 1
