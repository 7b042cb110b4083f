"""Where a request's time went, per stage: the Server-Timing header and the access log."""

from __future__ import annotations

import logging
import re

import numpy as np
from flask.testing import FlaskClient

from tests.conftest import tiff_bytes
from tests.fakes import FAKE_HEIGHT, FAKE_WIDTH


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_server_timing_names_decode_queue_model_and_total(client: FlaskClient) -> None:
    body = tiff_bytes(np.zeros((FAKE_HEIGHT, FAKE_WIDTH), np.uint16))
    captured = _Records()
    logging.getLogger("service.access").addHandler(captured)
    try:
        response = client.post("/predict", data=body, content_type="image/tiff")
    finally:
        logging.getLogger("service.access").removeHandler(captured)
    stages = dict(re.findall(r"(\w+);dur=([\d.]+)", response.headers["Server-Timing"]))
    assert set(stages) == {"decode", "queue", "model", "total"}
    assert float(stages["total"]) >= float(stages["model"]) >= 0
    assert set(captured.records[-1].stages_ms) == set(stages)  # type: ignore[attr-defined]
    assert "Server-Timing" not in client.get("/healthz").headers  # only where a model ran
