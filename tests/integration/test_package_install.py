"""`pip install .[cpu]` into a fresh venv gives a working `cpe-serving`: it starts Gunicorn with
the project's config and answers /readyz and /predict. The slowest test of `make test` that
installs anything (TensorFlow's wheel is unpacked, not downloaded: pip's cache holds it), so
`-m "not install"` leaves it out of a quick local run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.conftest import REPO_ROOT, tiff_bytes
from tests.integration.servers import free_port, wait_for_http_ok
from tests.models import export_tiny_model

pytestmark = pytest.mark.install


def test_pip_install_gives_a_cpe_serving_that_serves(tmp_path: Path) -> None:
    started = time.monotonic()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    # The TensorFlow variant as pyproject.toml declares it (the `cpu` extra); the cache is pip's.
    # --no-compile: byte-compiling TensorFlow's thousands of modules would be most of the cost,
    # and the server compiles what it imports.
    # From a copy: setuptools builds in the source tree (build/, *.egg-info), not in the checkout.
    source, skip = tmp_path / "source", shutil.ignore_patterns("__pycache__")
    for package in ("service", "client/cpe_client"):
        shutil.copytree(REPO_ROOT / package, source / package, ignore=skip)
    shutil.copy2(REPO_ROOT / "pyproject.toml", source)
    subprocess.run([*pip, "install", "--no-compile", f"{source}[cpu]"], check=True, timeout=900, cwd=tmp_path)
    installed_s = time.monotonic() - started
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert (site / "service" / "gunicorn_conf.py").is_file() and (site / "flask_swagger_ui").is_dir()
    export_tiny_model(tmp_path / "repository", "tiny", 1)
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(SERVING_MODEL_NAME="tiny", SERVING_WORKERS="1", PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    log = (tmp_path / "serving.log").open("wb")
    # Run from tmp_path, not the checkout: `service` must come from the venv, not the source tree.
    server = subprocess.Popen(
        [str(venv / "bin" / "cpe-serving"), "--model-repository", str(tmp_path / "repository"),
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for_http_ok(f"{url}/readyz", 120, server)
        except (RuntimeError, TimeoutError) as err:
            raise AssertionError(f"{err}\n{(tmp_path / 'serving.log').read_text()[-3000:]}") from err
        assert requests.get(f"{url}/readyz", timeout=10).json()["models"] == {"tiny": [1]}
        answer = requests.post(f"{url}/predict", data=tiff_bytes(np.zeros((32, 40), np.uint16)),
                               headers={"Content-Type": "image/tiff"}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == "tiny"
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
    print(f"pip install .[cpu] {installed_s:.0f} s; whole test {time.monotonic() - started:.0f} s")
