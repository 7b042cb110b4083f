"""POST /predict and the health routes through Flask's test client, with FakeBackend."""

from __future__ import annotations

import base64
import io
import struct
import threading
import zlib

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from service import create_app
from service.config import Settings
from tests.conftest import tiff_bytes
from tests.fakes import FAKE_HEIGHT, FAKE_WIDTH, FakeBackend, expected_probabilities


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _expected_infected(pixels: np.ndarray) -> float:
    """The fake model's p(infected) for pixels already at its input size."""
    return float(expected_probabilities(pixels.astype(np.float32)[np.newaxis])[0, 1])


def _png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image: a decompression bomb's calling card."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_raw_16bit_tiff(client: FlaskClient, rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 4096, size=(FAKE_HEIGHT, FAKE_WIDTH), dtype=np.uint16)
    response = client.post("/predict", data=tiff_bytes(pixels), content_type="image/tiff")
    assert response.status_code == 200, response.json
    body = response.json
    assert body["model"] == "fake" and body["model_version"] == 1 and body["request_id"]
    assert response.headers["X-Request-ID"] == body["request_id"]
    [prediction] = body["predictions"]
    assert prediction["probabilities"]["infected"] == pytest.approx(_expected_infected(pixels), abs=1e-5)
    assert prediction["label"] in ("uninfected", "infected")
    assert prediction["model"] == "fake"


def test_multipart_with_several_images_keeps_order_and_names(client: FlaskClient, rng: np.random.Generator) -> None:
    images = [rng.integers(0, 255, size=(FAKE_HEIGHT, FAKE_WIDTH), dtype=np.uint8) for _ in range(3)]
    files = [(io.BytesIO(_png(img)), f"well-{i}.png") for i, img in enumerate(images)]
    response = client.post("/predict", data={"image": files}, content_type="multipart/form-data")
    assert response.status_code == 200, response.json
    predictions = response.json["predictions"]
    assert [p["id"] for p in predictions] == ["well-0.png", "well-1.png", "well-2.png"]
    for image, prediction in zip(images, predictions):
        assert prediction["probabilities"]["infected"] == pytest.approx(_expected_infected(image), abs=1e-5)


def test_json_base64_echoes_sample_metadata(client: FlaskClient, rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 65535, size=(FAKE_HEIGHT, FAKE_WIDTH), dtype=np.uint16)
    instance = {"b64": base64.b64encode(tiff_bytes(pixels)).decode(), "id": "img-7",
                "plate": "P001", "well": "B07", "site": 3}
    response = client.post("/predict", json={"instances": [instance]})
    assert response.status_code == 200, response.json
    [prediction] = response.json["predictions"]
    assert {k: prediction[k] for k in ("id", "plate", "well", "site")} == {
        "id": "img-7", "plate": "P001", "well": "B07", "site": 3}


def test_request_id_is_taken_from_the_client(client: FlaskClient, rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 255, size=(FAKE_HEIGHT, FAKE_WIDTH), dtype=np.uint8)
    response = client.post("/predict", data=_png(pixels), content_type="image/png",
                           headers={"X-Request-ID": "lab-run-42"})
    assert response.json["request_id"] == "lab-run-42"
    assert response.headers["X-Request-ID"] == "lab-run-42"


def test_tiff_page_parameter_picks_the_page(client: FlaskClient, rng: np.random.Generator) -> None:
    pages = rng.integers(0, 4096, size=(3, FAKE_HEIGHT, FAKE_WIDTH), dtype=np.uint16)
    data = tiff_bytes(pages, photometric="minisblack")
    response = client.post("/predict?page=2", data=data, content_type="image/tiff")
    assert response.status_code == 200, response.json
    got = response.json["predictions"][0]["probabilities"]["infected"]
    assert got == pytest.approx(_expected_infected(pages[2]), abs=1e-5)
    missing = client.post("/predict?page=3", data=data, content_type="image/tiff")
    assert missing.status_code == 422 and missing.json["error"]["code"] == "invalid_image_shape"


def test_rgb_png_is_converted_to_gray_and_resized(client: FlaskClient, rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 255, size=(FAKE_HEIGHT * 3, FAKE_WIDTH * 3, 3), dtype=np.uint8)
    response = client.post("/predict", data=_png(pixels), content_type="image/png")
    assert response.status_code == 200, response.json


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data": b"not an image", "content_type": "image/png"}, 400, "undecodable_image"),
        ({"data": b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "content_type": "image/png"}, 400, "undecodable_image"),
        ({"data": b"", "content_type": "image/tiff"}, 400, "no_image"),
        ({"data": b"hello", "content_type": "text/plain"}, 415, "unsupported_media_type"),
        ({"data": b"{not json", "content_type": "application/json"}, 400, "invalid_input"),
        ({"json": {"instances": []}}, 422, "validation_error"),
        ({"json": {"images": ["x"]}}, 422, "validation_error"),
        ({"json": {"instances": [{"b64": "@@@"}]}}, 400, "invalid_base64"),
        ({"json": {"instances": [{"b64": "AAAA", "well": "Z99"}]}}, 422, "validation_error"),
        ({"data": {"file": (io.BytesIO(b"x"), "a.png")}, "content_type": "multipart/form-data"}, 400, "no_image"),
        ({"data": _png_header_claiming(100_000, 100_000), "content_type": "image/png"}, 413, "image_too_large"),
        ({"data": _png(np.zeros((4, 4), np.uint8)), "content_type": "image/png"}, 422, "invalid_image_shape"),
    ],
)
def test_bad_input_gets_its_code(client: FlaskClient, kwargs: dict[str, object], status: int, code: str) -> None:
    response = client.post("/predict", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.json
    assert response.json["error"]["code"] == code
    assert response.json["error"]["message"]


def test_bad_query_parameter_is_a_validation_error(client: FlaskClient) -> None:
    response = client.post("/predict?page=-1", data=b"x", content_type="image/png")
    assert response.status_code == 422 and response.json["error"]["code"] == "validation_error"


def test_unknown_model_is_404(client: FlaskClient) -> None:
    response = client.post("/predict?model=nope", data=b"x", content_type="image/png")
    assert response.status_code == 404 and response.json["error"]["code"] == "model_not_found"


def test_unknown_route_is_a_json_404(client: FlaskClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404 and response.json["error"]["code"] == "not_found"


def test_too_many_images_is_413(backend: FakeBackend) -> None:
    app = create_app(Settings(model_name="fake", max_images_per_request=2, warmup=False), backend)
    app.extensions["serving"].wait_ready(5)
    tiny = base64.b64encode(_png(np.zeros((FAKE_HEIGHT, FAKE_WIDTH), np.uint8))).decode()
    response = app.test_client().post("/predict", json={"instances": [{"b64": tiny}] * 3})
    assert response.status_code == 413 and response.json["error"]["code"] == "too_many_images"
    app.extensions["serving"].close()


def test_body_over_the_limit_is_413(backend: FakeBackend) -> None:
    app = create_app(Settings(model_name="fake", max_body_bytes=1000, warmup=False), backend)
    app.extensions["serving"].wait_ready(5)
    response = app.test_client().post("/predict", data=b"\0" * 5000, content_type="image/tiff")
    assert response.status_code == 413 and response.json["error"]["code"] == "body_too_large"
    app.extensions["serving"].close()


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").json == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["status"] == "ready"
    status = client.get("/status").json
    [version] = status["models"]["fake"]["versions"]
    assert version["state"] == "AVAILABLE" and version["batching"]["policy"] == "fixed"
    assert status["models"]["fake"]["signature"]["input"]["shape"] == [None, FAKE_HEIGHT, FAKE_WIDTH, 1]


def test_not_ready_until_loaded_then_503_for_predict() -> None:
    gate = threading.Event()

    class SlowLoading(FakeBackend):
        def load(self):  # type: ignore[no-untyped-def]
            gate.wait(5)
            return super().load()

    app = create_app(Settings(model_name="fake", warmup=False), SlowLoading())
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    response = client.post("/predict", data=b"x", content_type="image/png")
    assert response.status_code == 503 and response.json["error"]["code"] == "model_not_ready"
    assert "Retry-After" in response.headers
    gate.set()
    assert app.extensions["serving"].wait_ready(5)
    assert client.get("/readyz").status_code == 200
    app.extensions["serving"].close()


def test_failed_load_is_reported_then_retried_until_it_succeeds() -> None:
    attempts: list[int] = []

    class FlakyLoading(FakeBackend):
        def load(self):  # type: ignore[no-untyped-def]
            attempts.append(1)
            if len(attempts) < 3:
                raise OSError("saved_model.pb is corrupt")
            return super().load()

    app = create_app(Settings(model_name="fake", warmup=False), FlakyLoading())
    state = app.extensions["serving"]
    client = app.test_client()
    for _ in range(50):
        if state.errors:
            break
        threading.Event().wait(0.01)
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "corrupt" in ready.json["reason"]
    assert state.wait_ready(10)  # retried with backoff (0.5 s, 1 s) and recovered
    assert client.get("/readyz").status_code == 200 and len(attempts) == 3
    state.close()


def test_model_failure_is_a_json_5xx(rng: np.random.Generator) -> None:
    app = create_app(Settings(model_name="fake", warmup=False), FakeBackend(fail_with=RuntimeError("OOM")))
    app.extensions["serving"].wait_ready(5)
    pixels = rng.integers(0, 255, size=(FAKE_HEIGHT, FAKE_WIDTH), dtype=np.uint8)
    response = app.test_client().post("/predict", data=_png(pixels), content_type="image/png")
    assert response.status_code == 500 and response.json["error"]["code"] == "model_error"
    app.extensions["serving"].close()


def test_timeout_is_504_and_frees_the_queue(rng: np.random.Generator) -> None:
    gate = threading.Event()
    backend = FakeBackend(gate=gate)
    app = create_app(Settings(model_name="fake", warmup=False, request_timeout_s=0.2), backend)
    state = app.extensions["serving"]
    state.wait_ready(5)
    pixels = rng.integers(0, 255, size=(FAKE_HEIGHT, FAKE_WIDTH), dtype=np.uint8)
    response = app.test_client().post("/predict", data=_png(pixels), content_type="image/png")
    assert response.status_code == 504 and response.json["error"]["code"] == "timeout"
    assert state.get().batcher.queued_images == 0
    gate.set()
    state.close()


def test_metrics_route_serves_prometheus_text(client: FlaskClient, app: Flask) -> None:
    client.get("/healthz")
    body = client.get("/metrics").get_data(as_text=True)
    assert "serving_requests_total" in body and "serving_batch_size_images_bucket" in body
