"""A real Prometheus (Debian's package) scraping the service under Gunicorn with 2 workers.

Counts queried from Prometheus must equal the traffic sent, summed across workers; the repo's
recording rules must evaluate; promtool must accept the exposition and the rule files.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator

import numpy as np
import pytest
import requests
from PIL import Image

from service import metrics as service_metrics
from tests.conftest import REPO_ROOT
from tests.integration.servers import GunicornServer, free_port, wait_for_http_ok

PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
GRAFANA_DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "cpe-serving.json"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} missing: .ci/run installs Debian's 'prometheus' package")
        pytest.skip(f"{name} not installed (apt-get install prometheus); CI installs it")
    return path


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(96, 128), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    with GunicornServer(tmp_path_factory.mktemp("prom"), workers=2, max_batch_size=2, threads=8) as running:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # both workers loaded, not just the one /readyz hit
            text = requests.get(f"{running.url}/metrics", timeout=5).text
            workers = len(list(running.metrics_dir.glob("gauge_livemin_*.db")))
            if workers == 2 and re.search(r'^serving_ready\{model="cpe_cnn"\} 1\.0$', text, re.M):
                break
            time.sleep(0.5)
        else:
            pytest.fail("both workers never became ready")
        yield running


@pytest.fixture(scope="module")
def traffic(server: GunicornServer) -> dict[str, int]:
    """Known traffic: what Prometheus must count."""
    sent = {"ok_requests": 0, "images": 0, "undecodable": 0, "unsupported": 0}
    for seed in range(7):
        response = requests.post(f"{server.url}/predict", data=_png(seed), headers={"Content-Type": "image/png"}, timeout=60)
        assert response.status_code == 200, response.text
        sent["ok_requests"] += 1
        sent["images"] += 1
    for seed in range(2):
        body = {"instances": [{"b64": base64.b64encode(_png(100 + seed * 3 + i)).decode()} for i in range(3)]}
        assert requests.post(f"{server.url}/predict", json=body, timeout=60).status_code == 200
        sent["ok_requests"] += 1
        sent["images"] += 3
    for _ in range(4):
        response = requests.post(f"{server.url}/predict", data=b"junk", headers={"Content-Type": "image/tiff"}, timeout=10)
        assert response.status_code == 400
        sent["undecodable"] += 1
    for _ in range(3):
        response = requests.post(f"{server.url}/predict", data=b"junk", headers={"Content-Type": "text/csv"}, timeout=10)
        assert response.status_code == 415
        sent["unsupported"] += 1
    return sent


@pytest.fixture(scope="module")
def prometheus(server: GunicornServer, traffic: dict[str, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = _tool("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROMETHEUS_DIR / "rules" / "recording.yml"), str(PROMETHEUS_DIR / "rules" / "alerts.yml")],
        "scrape_configs": [{"job_name": "cpe-serving", "static_configs": [{"targets": [f"127.0.0.1:{server.port}"]}]}],
    }
    (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is valid YAML
    port = free_port()
    process = subprocess.Popen(
        [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(workdir / "prometheus.log").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http_ok(f"{url}/-/ready", 60, process)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def _query(url: str, expr: str, want: float | None = None, timeout_s: float = 40) -> float:
    """Poll an instant query until it returns a (wanted) scalar value."""
    deadline = time.monotonic() + timeout_s
    value = math.nan
    while time.monotonic() < deadline:
        result = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5).json()
        assert result["status"] == "success", result
        samples = result["data"]["result"]
        if samples:
            value = float(samples[0]["value"][1])
            if want is None and math.isfinite(value) or value == want:
                return value
        time.sleep(0.5)
    raise AssertionError(f"{expr} = {value}, wanted {want if want is not None else 'a number'}")


def test_counts_in_prometheus_equal_the_traffic_sent(prometheus: str, traffic: dict[str, int]) -> None:
    _query(prometheus, 'sum(serving_requests_total{route="/predict",status_class="2xx"})', traffic["ok_requests"])
    _query(prometheus, "sum(serving_images_total)", traffic["images"])
    _query(prometheus, 'sum(serving_rejections_total{reason="undecodable_image"})', traffic["undecodable"])
    _query(prometheus, 'sum(serving_rejections_total{reason="unsupported_media_type"})', traffic["unsupported"])
    _query(prometheus, "sum(serving_predictions_total)", traffic["images"])
    _query(prometheus, "sum(serving_batch_size_images_sum)", traffic["images"] + 0.0)


def test_quantiles_and_recording_rules_evaluate(prometheus: str, server: GunicornServer) -> None:
    # rate() needs the counters to move while Prometheus watches: send traffic across scrapes.
    for seed in range(4):
        requests.post(f"{server.url}/predict", data=_png(200 + seed), headers={"Content-Type": "image/png"}, timeout=60)
        time.sleep(1.0)
    p50 = _query(prometheus, 'histogram_quantile(0.5, sum by (le) (rate(serving_request_latency_seconds_bucket{route="/predict"}[1m])))')
    assert 0 < p50 < 60
    assert _query(prometheus, "model:serving_images:rate5m") > 0
    assert 0 < _query(prometheus, "model:serving_batch_size_images:mean5m") <= 2
    assert _query(prometheus, "model:serving_queue_saturation:ratio") == 0
    rules = requests.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
    assert all(rule["health"] == "ok" for group in rules for rule in group["rules"]), rules


def test_promtool_accepts_the_exposition(server: GunicornServer, traffic: dict[str, int]) -> None:
    exposition = requests.get(f"{server.url}/metrics", timeout=5).text
    checked = subprocess.run([_tool("promtool"), "check", "metrics"], input=exposition, text=True,
                             capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_accepts_config_rules_and_rule_unit_tests() -> None:
    promtool = _tool("promtool")
    for args in (["check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
                 ["check", "rules", *map(str, sorted((PROMETHEUS_DIR / "rules").glob("*.yml")))],
                 ["test", "rules", str(PROMETHEUS_DIR / "tests" / "alerts_test.yml")]):
        checked = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_dashboard_and_rules_only_use_metrics_the_service_exports() -> None:
    exported = {
        family.name for family in service_metrics.REGISTRY.collect() if family.name.startswith("serving_")
    }
    texts = [GRAFANA_DASHBOARD.read_text()] + [p.read_text() for p in (PROMETHEUS_DIR / "rules").glob("*.yml")]
    used = {
        re.sub(r"_(bucket|sum|count|total)$", "", name)
        for text in texts for name in re.findall(r"(?<![:\w])serving_[a-z_]+", text)
    }
    exported_bases = {re.sub(r"_total$", "", name) for name in exported}
    assert used <= exported_bases, used - exported_bases
    dashboard = json.loads(GRAFANA_DASHBOARD.read_text())
    assert {"Batch size distribution (images per model call)", "Infected fraction by model version"} <= {
        panel["title"] for panel in dashboard["panels"]}
