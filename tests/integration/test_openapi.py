"""/openapi.json is generated from the code and covers every route; schemathesis fuzzes the
running server against it (bounded): no 5xx, and every response matches its schema."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jsonschema_rs
import pytest
import requests

from service import create_app
from service.config import Settings
from tests.fakes import FakeBackend
from tests.integration.servers import GunicornServer, tiny_model_server


def test_every_route_is_documented() -> None:
    app = create_app(Settings(model_name="fake", warmup=False), FakeBackend())
    manager = app.extensions["serving"]
    try:
        manager.wait_ready(5)
        client = app.test_client()
        spec = client.get("/openapi.json").json
        undocumented = [
            rule.rule for rule in app.url_map.iter_rules()
            if rule.endpoint not in ("static", "openapi", "docs", "docs_asset")
            and not getattr(app.view_functions[rule.endpoint], "__openapi__", None)
        ]
        assert undocumented == []
        assert spec["openapi"].startswith("3.1")
        assert "/v1/models/{name}/versions/{version}:predict" in spec["paths"]
        assert spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/PredictRequest"}
        assert "fake" in spec["paths"]["/v2/models/{name}/infer"]["post"]["parameters"][0]["schema"]["examples"]
        docs = client.get("/docs")
        # Swagger UI from the package's assets; the operations stay listed for readers without JS.
        assert docs.status_code == 200 and b"/v2/models/{name}/infer" in docs.data
        for asset in re.findall(r"(?:src|href)='(/docs/assets/[^']+)'", docs.text):
            assert client.get(asset).status_code == 200, asset
        assert b"http" not in docs.data  # no CDN: every URL is relative to the service
        assert client.get("/docs/assets/../../config.py").status_code == 404
    finally:
        manager.close()


def test_operation_ids_read_well_and_every_route_has_valid_examples() -> None:
    app = create_app(Settings(model_name="fake", warmup=False), FakeBackend())
    manager = app.extensions["serving"]
    try:
        manager.wait_ready(5)
        spec = app.test_client().get("/openapi.json").json
    finally:
        manager.close()
    operations = {op["operationId"]: op for methods in spec["paths"].values() for op in methods.values()}
    assert {"predict", "healthz", "readyz", "tfserving_predict", "tfserving_predict_by_version", "v2_infer",
            "v2_model_metadata"} <= set(operations)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", name) and not re.search(r"_\d+$", name) for name in operations)
    checked = 0
    for name, operation in operations.items():
        media_objects = list(operation.get("requestBody", {}).get("content", {}).items())
        ok = operation["responses"]["200"]
        media_objects += list(ok.get("content", {}).items())
        assert any("example" in media for _, media in media_objects), f"{name} has no example"
        for response in operation["responses"].values():
            media_objects += list(response.get("content", {}).items())
        for media_type, media in media_objects:
            if "example" in media:
                schema = {**media["schema"], "components": spec["components"]}
                errors = [str(e) for e in jsonschema_rs.validator_for(schema).iter_errors(media["example"])]
                assert errors == [], f"{name} {media_type}: {errors}"
                checked += 1
    assert checked >= 30


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    root = tmp_path_factory.mktemp("gunicorn")
    with tiny_model_server(root, max_batch_size=2, threads=8, data_dir=root / "data") as running:  # /jobs too
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
