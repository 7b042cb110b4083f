"""Every line a Gunicorn run writes is one JSON object: start-up (TensorFlow's C++ lines
included), requests, errors and shutdown; per-logger levels apply; spans printed by the console
exporter are JSON lines as well."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import requests

from tests.conftest import tiff_bytes
from tests.integration.servers import tiny_model_server


def test_every_line_of_a_gunicorn_run_is_json(tmp_path: Path) -> None:
    # Started as `make run` starts it (gunicorn -c python:service.gunicorn_conf), with TensorFlow's
    # C++ logging at its default level: its start-up lines must not leak out as plain text.
    env = {"TF_CPP_MIN_LOG_LEVEL": None, "OTEL_TRACES_EXPORTER": "console"}
    with tiny_model_server(tmp_path, env=env, workers=1, log_levels="service.batching=DEBUG") as server:
        image = tiff_bytes(np.zeros((32, 40), np.uint16))
        ok = requests.post(f"{server.url}/predict", data=image, headers={"Content-Type": "image/tiff"}, timeout=30)
        bad = requests.post(f"{server.url}/predict", data=b"not an image", headers={"Content-Type": "image/tiff"},
                            timeout=30)
        assert (ok.status_code, bad.status_code) == (200, 400)
        assert server.terminate() == 0
    lines = [line for line in server.log().splitlines() if line.strip()]
    entries = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except ValueError as err:
            raise AssertionError(f"line {number} of {len(lines)} is not JSON: {line[:300]}") from err
        assert isinstance(entry, dict), line
        entries.append(entry)
    logs = [entry for entry in entries if "logger" in entry]
    messages = " | ".join(str(entry["message"]) for entry in logs)
    # Start-up: Gunicorn's master and worker, the model, and TensorFlow's C++ lines, wrapped.
    assert "Starting gunicorn" in messages and "Booting worker" in messages
    assert any(entry["logger"] == "service.models.servable" for entry in logs)
    assert any(entry["logger"] == "stderr" for entry in logs), "TensorFlow wrote nothing native to fd 2?"
    # Requests, the error with its stable code, and the per-logger DEBUG level of the batcher.
    access = [entry for entry in logs if entry["logger"] == "service.access" and entry["route"] == "/predict"]
    assert [(entry["status"], entry["error_code"]) for entry in access] == [(200, None), (400, "undecodable_image")]
    assert access[0]["model"] == "tiny" and access[0]["client"] == "127.0.0.1"
    assert any(entry["logger"] == "service.batching.batcher" and entry["level"] == "debug" for entry in logs)
    # Shutdown, to the master's last line.
    assert "Worker exiting" in messages and logs[-1]["message"].startswith("Shutting down: Master")
    # Tracing's console exporter: the request's span, one JSON object per line.
    assert any(entry.get("name") == "POST /predict" for entry in entries)
