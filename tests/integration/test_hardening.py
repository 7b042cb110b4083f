"""Hostile and careless clients against real Gunicorn: unbounded labels, slow and oversized
bodies, deep JSON, non-finite numbers. Each case once broke or starved a worker."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.integration.servers import GunicornServer
from tests.models import export_tiny_model


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    root = tmp_path_factory.mktemp("hardening")
    export_tiny_model(root / "repo", "tiny", 1)
    with GunicornServer(root, model_repository=root / "repo", model_name="tiny", threads=8,
                        max_batch_size=4, repository_poll_interval_s=0) as started:
        yield started


def _series(exposition: str) -> int:
    return sum(1 for line in exposition.splitlines() if line and not line.startswith("#"))


def _dir_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.glob("*.db"))


def test_random_model_names_create_no_metric_series(server: GunicornServer) -> None:
    session = requests.Session()
    v2_body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["eA=="]}]}

    def probe(name: str) -> set[int]:
        with requests.Session() as client:
            return {
                client.get(f"{server.url}/v1/models/{name}", timeout=10).status_code,
                client.get(f"{server.url}/v1/models/{name}/metadata", timeout=10).status_code,
                client.post(f"{server.url}/v1/models/{name}:predict", json={"instances": [{"b64": "eA=="}]},
                            timeout=10).status_code,
                client.get(f"{server.url}/v2/models/{name}", timeout=10).status_code,
                client.get(f"{server.url}/v2/models/{name}/ready", timeout=10).status_code,
                client.post(f"{server.url}/v2/models/{name}/infer", json=v2_body, timeout=10).status_code,
                client.post(f"{server.url}/predict?model={name}", data=b"x",
                            headers={"Content-Type": "image/png"}, timeout=10).status_code,
            }

    with ThreadPoolExecutor(8) as pool:
        # A first few unknown names create each route's (model="unknown", 4xx) series once ...
        assert set().union(*pool.map(probe, [secrets.token_hex(8) for _ in range(8)])) == {404}
        baseline_series = _series(session.get(f"{server.url}/metrics", timeout=10).text)
        baseline_bytes = _dir_bytes(server.metrics_dir)
        # ... and 1,000 more (7,000 requests) add nothing.
        names = [secrets.token_hex(8) for _ in range(1000)]
        assert set().union(*pool.map(probe, names)) == {404}
    exposition = session.get(f"{server.url}/metrics", timeout=10).text
    assert not any(name in exposition for name in names)
    assert _series(exposition) == baseline_series
    assert _dir_bytes(server.metrics_dir) == baseline_bytes
