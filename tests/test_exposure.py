"""What the service exposes, and to whom: API keys, public paths, and no server paths in errors."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest

from service import create_app
from service.config import Settings
from tests.conftest import tiff_bytes
from tests.fakes import FAKE_HEIGHT, FAKE_WIDTH, FakeBackend

_IMAGE = tiff_bytes(np.zeros((FAKE_HEIGHT, FAKE_WIDTH), np.uint16))


def _app(**settings: object):  # type: ignore[no-untyped-def]
    app = create_app(Settings(model_name="fake", warmup=False, **settings), FakeBackend())  # type: ignore[arg-type]
    assert app.extensions["serving"].wait_ready(5)
    return app


def test_keys_guard_every_route_but_the_public_ones() -> None:
    app = _app(api_keys="alpha, beta")
    client = app.test_client()
    refused = client.post("/predict", data=_IMAGE, content_type="image/tiff")
    assert refused.status_code == 401 and refused.json["error"]["code"] == "unauthorized"
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.post("/predict", data=_IMAGE, content_type="image/tiff",
                       headers={"Authorization": "Bearer beta"}).status_code == 200
    assert client.post("/predict", data=_IMAGE, content_type="image/tiff",
                       headers={"X-API-Key": "alpha"}).status_code == 200
    assert client.post("/predict", data=_IMAGE, content_type="image/tiff",
                       headers={"Authorization": "Bearer gamma"}).status_code == 401
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200, path
    for path in ("/status", "/docs", "/openapi.json", "/v1/models/fake", "/v2/models/fake"):
        assert client.get(path).status_code == 401, path
    v1 = client.get("/v1/models/fake")
    assert isinstance(v1.json["error"], str)  # TF Serving's shape, still
    app.extensions["serving"].close()


def test_a_key_file_holds_digests_and_public_paths_are_a_setting(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# lab pipeline\n{hashlib.sha256(b's3cret').hexdigest()}\n\n")
    app = _app(api_keys_file=keys, public_paths="/healthz")
    client = app.test_client()
    assert client.get("/status", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/metrics").status_code == 401 and client.get("/healthz").status_code == 200
    app.extensions["serving"].close()
    keys.write_text("s3cret\n")  # a key in clear by mistake: refused at start, not accepted
    with pytest.raises(ValueError, match="SHA-256"):
        create_app(Settings(model_name="fake", api_keys_file=keys), FakeBackend())


def test_no_keys_means_open_as_before() -> None:
    app = _app()
    assert app.test_client().post("/predict", data=_IMAGE, content_type="image/tiff").status_code == 200
    app.extensions["serving"].close()


def test_metrics_content_type_names_its_charset_once() -> None:
    app = _app()
    content_type = app.test_client().get("/metrics").headers["Content-Type"]
    assert content_type.count("charset") == 1 and content_type.startswith("text/plain")
    app.extensions["serving"].close()


def test_load_errors_shown_to_clients_carry_no_server_paths(tmp_path: Path) -> None:
    broken = tmp_path / "repo" / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    app = create_app(Settings(model_repository=tmp_path / "repo", model_name="broken", warmup=False,
                              repository_poll_interval_s=0))
    manager = app.extensions["serving"]
    deadline = time.monotonic() + 60
    while not manager.errors and time.monotonic() < deadline:  # the failed load is reported
        time.sleep(0.05)
    client = app.test_client()
    shown = [client.get("/readyz").get_data(as_text=True), client.get("/v1/models/broken").get_data(as_text=True),
             client.get("/status").get_data(as_text=True)]
    assert "saved_model" in shown[0] or "SavedModel" in shown[0] or "DecodeError" in shown[0], shown[0]
    for text in shown:
        assert str(tmp_path) not in text
    app.extensions["serving"].close()


def test_operation_ids_are_readable_and_unique() -> None:
    app = _app()
    spec = app.test_client().get("/openapi.json").json
    ids = [operation["operationId"] for path in spec["paths"].values() for operation in path.values()]
    assert len(ids) == len(set(ids))
    assert {"predict", "tfserving_predict", "tfserving_predict_by_version", "tfserving_predict_by_label",
            "v2_infer", "v2_infer_by_version", "healthz", "readyz", "status", "metrics"} <= set(ids)
    app.extensions["serving"].close()


def test_the_openapi_document_says_which_routes_need_a_key() -> None:
    open_app = _app()
    spec = open_app.test_client().get("/openapi.json").json
    assert "security" not in spec and set(spec["components"]["securitySchemes"]) == {"bearerKey", "apiKeyHeader"}
    keyed = _app(api_keys="alpha", public_paths="/healthz,/openapi.json,/docs,/docs/assets/")
    client = keyed.test_client()
    spec = client.get("/openapi.json").json
    assert client.get("/docs").status_code == 200 and client.get("/docs/assets/nothing-here").status_code == 404
    assert client.get("/status").status_code == 401
    assert spec["security"] == [{"bearerKey": []}, {"apiKeyHeader": []}]
    assert spec["paths"]["/healthz"]["get"]["security"] == []
    assert "security" not in spec["paths"]["/predict"]["post"]  # the document's default: a key
    for app in (open_app, keyed):
        app.extensions["serving"].close()


def test_build_info_names_the_running_release() -> None:
    import platform

    from prometheus_client import REGISTRY

    from service import __version__

    app = _app()
    samples = [s for metric in REGISTRY.collect() if metric.name == "serving_build_info" for s in metric.samples]
    assert any(s.labels["version"] == __version__ and s.labels["python"] == platform.python_version()
               and s.labels["backend"] == "fake" and s.value == 1 for s in samples)
    app.extensions["serving"].close()
