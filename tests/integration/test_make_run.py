"""`make run` exactly as the README's first lines say, with no extra environment.

Every other integration test starts Gunicorn with its own settings and metrics directory;
this one is what a user types, so a setting only the tests provide cannot hide a broken
default (an empty /metrics under `make run` once did).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import requests

from tests.conftest import REPO_ROOT, tiff_bytes
from tests.integration.servers import free_port, wait_for_http_ok

_METRICS_DIRS = Path("/tmp")


def _user_environment() -> dict[str, str]:
    """The environment of a shell that never heard of this service."""
    return {key: value for key, value in os.environ.items()
            if not key.startswith(("SERVING_", "PROMETHEUS_")) and key not in ("PORT", "HOST")}


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_make_run_serves_counts_and_cleans_up(tmp_path: Path) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert re.search(r"^make run\b", readme, re.MULTILINE), "the README's first command changed"
    port = free_port()
    before = set(_METRICS_DIRS.glob("serving-metrics-*"))
    log = (tmp_path / "make-run.log").open("wb")
    process = subprocess.Popen(["make", "run", f"PORT={port}"], cwd=REPO_ROOT, env=_user_environment(),
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http_ok(f"{url}/readyz", 300, process)
        created = set(_METRICS_DIRS.glob("serving-metrics-*")) - before
        assert len(created) == 1, created
        pixels = np.random.default_rng(0).integers(0, 4096, size=(1024, 1360), dtype=np.uint16)
        for _ in range(3):
            response = requests.post(f"{url}/predict", data=tiff_bytes(pixels),
                                     headers={"Content-Type": "image/tiff"}, timeout=60)
            assert response.status_code == 200, response.text
        exposition = requests.get(f"{url}/metrics", timeout=10).text
        assert _metric(exposition, "serving_requests_total", route="/predict", status_class="2xx") == 3
        assert _metric(exposition, "serving_images_total", model="cpe_cnn") == 3
        assert _metric(exposition, "serving_ready", model="cpe_cnn") == 1
        # Workers run oneDNN's kernels whatever the CPU (stock TF: only with VNNI/AMX).
        status = requests.get(f"{url}/status", timeout=10).json()
        assert status["models"]["cpe_cnn"]["devices"] == ["/physical_device:CPU:0 (oneDNN)"], status
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(60)
    deadline = time.monotonic() + 10
    while any(path.exists() for path in created) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(path.exists() for path in created), "the metrics directory outlived the server"
    assert b"Traceback" not in (tmp_path / "make-run.log").read_bytes()
