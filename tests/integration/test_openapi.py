"""/openapi.json is generated from the code and covers every route; schemathesis fuzzes the
running server against it (bounded): no 5xx, and every response matches its schema."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from service import create_app
from service.config import Settings
from tests.fakes import FakeBackend
from tests.integration.servers import GunicornServer
from tests.models import export_tiny_model


def test_every_route_is_documented() -> None:
    app = create_app(Settings(model_name="fake", warmup=False), FakeBackend())
    manager = app.extensions["serving"]
    try:
        manager.wait_ready(5)
        client = app.test_client()
        spec = client.get("/openapi.json").json
        undocumented = [
            rule.rule for rule in app.url_map.iter_rules()
            if rule.endpoint not in ("static", "openapi", "docs")
            and not getattr(app.view_functions[rule.endpoint], "__openapi__", None)
        ]
        assert undocumented == []
        assert spec["openapi"].startswith("3.1")
        assert "/v1/models/{name}/versions/{version}:predict" in spec["paths"]
        assert spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/PredictRequest"}
        assert "fake" in spec["paths"]["/v2/models/{name}/infer"]["post"]["parameters"][0]["schema"]["examples"]
        docs = client.get("/docs")
        assert docs.status_code == 200 and b"/v2/models/{name}/infer" in docs.data
    finally:
        manager.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    repository = tmp_path_factory.mktemp("repository")
    export_tiny_model(repository, "tiny", 1)
    with GunicornServer(tmp_path_factory.mktemp("gunicorn"), model_repository=repository, model_name="tiny",
                        max_batch_size=2, threads=8) as running:
        yield running


def test_schemathesis_finds_no_server_error_and_no_schema_violation(server: GunicornServer, tmp_path: Path) -> None:
    executable = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    result = subprocess.run(
        [executable, "run", f"{server.url}/openapi.json",
         "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance",
         "--max-examples", "10", "--generation-deterministic", "--phases", "examples,coverage,fuzzing",
         "--request-timeout", "20", "--max-time", "90", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-6000:]
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
