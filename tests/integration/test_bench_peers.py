"""A bounded slice of `make bench`'s peers (bench/README.md): the naive Flask app under Gunicorn
gthread (8 threads, 1 worker) on the 64x64 benchmark CNN, measured by wrk through
bench/wrk_post.lua, as the full run measures every peer. Real Gunicorn, real wrk (Debian
package, installed by .ci/run); the app runs from the test's interpreter here, from the bench
venv in `make bench`. About 30 s. Ray Serve is not started: its cluster alone takes ~20 s of
two cores to come up, `make bench` covers it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.payloads import write_payloads
from bench.servers import naive_server
from bench.wrk import run_wrk_cell, wrk_path

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("repo")
    subprocess.run([sys.executable, "-m", "bench.small_model", "--repository", str(repository)], cwd=REPO_ROOT,
                   check=True, capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return repository / "small_cnn" / "1"


def test_wrk_measures_the_naive_gthread_peer(small_model: Path, tmp_path: Path) -> None:
    assert wrk_path(), "wrk is not installed: apt-get install wrk (.ci/run does)"
    payloads = write_payloads(tmp_path / "payloads", 2, 64, 64, "png", seed=2)
    server = naive_server(tmp_path, "gthread-test", small_model, 1, "gthread", threads=8, python=sys.executable)
    server.start()
    try:
        server.wait_ready(timeout_s=120)
        cell = run_wrk_cell(server.port, payloads, "image/png", [server.pid], concurrency=4, warmup_s=0,
                            duration_s=2)
        threads = len(os.listdir(f"/proc/{server.pid}/task")) if server.alive() else 0
    finally:
        server.stop()
    assert cell["errors"] == 0, cell  # every answer a 2xx: the peer accepts wrk's raw PNG bodies
    assert cell["requests"] > 0 and cell["throughput_rps"] > 0
    assert 0 < cell["p50_ms"] <= cell["p99_ms"] <= cell["max_ms"]
    assert cell["server_cpu_cores"] > 0  # the watched process tree (master + gthread worker) did the work
    assert "Latency Distribution" in cell["latency_table"]  # wrk --latency's own table, kept for the log
    assert threads >= 1
