"""Each protocol's error shape and statuses, through Flask's test client with FakeBackend.

This service's routes answer `{"error": {"code", "message"}}`; TF Serving's REST v1 and the
Open Inference Protocol answer `{"error": "<message>"}` and turn 422 into 400, as their
clients expect. Unmatched URLs under a protocol's prefix answer in that protocol's shape.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from service import create_app
from service.config import Settings
from tests.conftest import tiff_bytes
from tests.fakes import FAKE_HEIGHT, FAKE_WIDTH, FakeBackend


def _plain(response) -> str:  # type: ignore[no-untyped-def]
    body = response.get_json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    return str(body["error"])


_V1_BODY = {"instances": [{"b64": "eA=="}]}
_V2_BODY = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["eA=="]}]}


@pytest.mark.parametrize(("method", "path", "status"), [
    ("get", "/v1/models/nope", 404),
    ("post", "/v1/models/nope:predict", 404),
    ("get", "/v1/models/fake/versions/9", 404),
    ("get", "/v1/models/fake/labels/canary/metadata", 404),
    ("get", "/v1/not/a/route", 404),
    ("get", "/v2/models/nope", 404),
    ("post", "/v2/models/nope/infer", 404),
    ("get", "/v2/models/fake/versions/9/ready", 404),
    ("get", "/v2/not-a-route", 404),
    ("get", "/v2/models/fake/infer", 405),
])
def test_protocol_routes_answer_their_own_error_shape(client: FlaskClient, method: str, path: str, status: int) -> None:
    response = getattr(client, method)(path, json=_V2_BODY if path.startswith("/v2") else _V1_BODY)
    assert response.status_code == status
    assert _plain(response)


def test_v1_bad_requests_are_400_with_a_message(client: FlaskClient) -> None:
    assert "JSON object" in _plain(client.post("/v1/models/fake:predict", data="[1]", content_type="application/json"))
    response = client.post("/v1/models/fake:predict", json={"instances": [1], "inputs": [1]})
    assert response.status_code == 400 and _plain(response)  # a validation error is 400, not 422
    response = client.post("/v1/models/fake:predict", json={"instances": [{"b64": "***"}]})
    assert response.status_code == 400 and "base64" in _plain(response)
    response = client.post("/v1/models/fake:predict", json={"instances": [[[1.0] * 4] * 4]})
    assert response.status_code == 400 and "smaller than" in _plain(response)  # 422 in /predict


def test_v2_bad_requests_are_400_with_a_message(client: FlaskClient) -> None:
    response = client.post("/v2/models/fake/infer", json={"inputs": []})
    assert response.status_code == 400 and _plain(response)
    tensor = {"name": "wrong", "shape": [1], "datatype": "BYTES", "data": ["eA=="]}
    response = client.post("/v2/models/fake/infer", json={"inputs": [tensor]})
    assert response.status_code == 400 and "unexpected inference input 'wrong'" in _plain(response)
    response = client.post("/v2/models/fake/infer", data=b"{}", headers={"Inference-Header-Content-Length": "x"})
    assert response.status_code == 400 and "integer" in _plain(response)


def test_own_routes_answer_code_and_message(client: FlaskClient) -> None:
    response = client.post("/predict?model=nope", data=b"x", content_type="image/png")
    assert response.status_code == 404 and response.json["error"]["code"] == "model_not_found"
    response = client.get("/no/such/route")
    assert response.status_code == 404 and response.json["error"] == {"code": "not_found", "message": response.json["error"]["message"]}
    response = client.post("/predict", data=b"x" * 4, content_type="image/tiff")
    assert response.status_code == 400 and response.json["error"]["code"] == "undecodable_image"


def test_503_carries_retry_after_in_every_shape() -> None:
    gate = threading.Event()
    app = create_app(Settings(model_name="fake", warmup=False), FakeBackend(load_gate=gate))
    client = app.test_client()
    own = client.post("/predict", data=b"x", content_type="image/png")
    v1 = client.post("/v1/models/fake:predict", json={"instances": [[[0.0] * FAKE_WIDTH] * FAKE_HEIGHT]})
    assert own.status_code == 503 and own.json["error"]["code"] == "model_not_ready"
    assert v1.status_code == 503 and "not ready" in _plain(v1)
    assert own.headers["Retry-After"] == v1.headers["Retry-After"] == "5"
    gate.set()
    app.extensions["serving"].close()


_DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("path", ["/predict", "/v1/models/fake:predict", "/v2/models/fake/infer"])
def test_absurdly_nested_json_is_400(client: FlaskClient, path: str) -> None:
    for body in (_DEEP, '{"instances": ' + _DEEP + "}", '{"inputs": [{"data": ' + _DEEP + "}]}"):
        response = client.post(path, data=body, content_type="application/json")
        assert response.status_code == 400, (path, response.status_code)


def test_v2_shapes_whose_product_overflows_are_400(client: FlaskClient) -> None:
    huge = [1, 2**32, 2**32, 1]
    as_json = {"inputs": [{"name": "image", "shape": huge, "datatype": "FP32", "data": [1.0]}]}
    assert client.post("/v2/models/fake/infer", json=as_json).status_code == 400
    header = json.dumps({"inputs": [{"name": "image", "shape": huge, "datatype": "UINT8",
                                     "parameters": {"binary_data_size": 0}}]}).encode()
    response = client.post("/v2/models/fake/infer", data=header,
                           headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400 and "does not match shape" in _plain(response)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_pixels_are_refused_on_every_route(client: FlaskClient, bad: float) -> None:
    pixels = np.zeros((FAKE_HEIGHT, FAKE_WIDTH), np.float32)
    pixels[3, 4] = bad
    response = client.post("/v1/models/fake:predict", json={"instances": [pixels.tolist()]})
    assert response.status_code == 400 and "NaN or infinite" in _plain(response)
    v2_json = {"inputs": [{"name": "image", "shape": [1, FAKE_HEIGHT, FAKE_WIDTH], "datatype": "FP32",
                           "data": pixels.ravel().tolist()}]}
    assert client.post("/v2/models/fake/infer", json=v2_json).status_code == 400
    header = json.dumps({"inputs": [{"name": "image", "shape": [1, FAKE_HEIGHT, FAKE_WIDTH], "datatype": "FP32",
                                     "parameters": {"binary_data_size": pixels.nbytes}}]}).encode()
    response = client.post("/v2/models/fake/infer", data=header + pixels.tobytes(),
                           headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400 and "NaN or infinite" in _plain(response)
    response = client.post("/predict", data=tiff_bytes(pixels), content_type="image/tiff")
    assert response.status_code == 422 and response.json["error"]["code"] == "non_finite_input"


def test_non_finite_model_outputs_fail_the_request_not_the_metrics() -> None:
    class NaNModel(FakeBackend):
        def predict(self, batch):  # type: ignore[no-untyped-def]
            return np.full((len(batch), 2), np.nan, np.float32)

    app = create_app(Settings(model_name="fake", warmup=False), NaNModel())
    assert app.extensions["serving"].wait_ready(5)
    before = REGISTRY.get_sample_value("serving_prediction_confidence_sum", {"model": "fake", "version": "1"}) or 0.0
    pixels = np.zeros((FAKE_HEIGHT, FAKE_WIDTH), np.uint16)
    response = app.test_client().post("/predict", data=tiff_bytes(pixels), content_type="image/tiff")
    assert response.status_code == 500 and response.json["error"]["code"] == "model_error"
    after = REGISTRY.get_sample_value("serving_prediction_confidence_sum", {"model": "fake", "version": "1"}) or 0.0
    assert after == before
    app.extensions["serving"].close()
