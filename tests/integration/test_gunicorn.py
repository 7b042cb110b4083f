"""The committed model behind real Gunicorn on loopback, spoken to over HTTP."""

from __future__ import annotations

import base64
import io
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import tensorflow as tf
from PIL import Image

from service.codecs.images import decode_image
from service.models import resolve
from service.preprocessing import prepare
from tests.conftest import MODEL_REPOSITORY, tiff_bytes
from tests.integration.servers import GunicornServer

HEIGHT, WIDTH = 1024, 1360


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    with GunicornServer(
        tmp_path_factory.mktemp("gunicorn"), batching="fixed", max_batch_size=4, auto_batch_size=False,
        max_batch_delay_ms=50, threads=16,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def reference_model() -> object:
    """The same SavedModel called directly in this process: the ground truth for answers."""
    version = resolve(MODEL_REPOSITORY, "cpe_cnn")
    return tf.saved_model.load(str(version.path)).signatures["serving_default"]


def _expected(model: object, encoded: list[bytes]) -> np.ndarray:
    batch = np.stack([prepare(decode_image(data), HEIGHT, WIDTH, 1) for data in encoded])
    return model(image=tf.constant(batch))["probabilities"].numpy()  # type: ignore[operator]


def _field(rng: np.random.Generator, high: int = 4095) -> np.ndarray:
    """A random 1360x1024 field with a random overall level, so every image differs."""
    base = rng.integers(0, high // 2, size=(HEIGHT, WIDTH), dtype=np.uint16)
    return (base + rng.integers(0, high // 2)).astype(np.uint16)


def test_16bit_full_field_tiff_gets_the_models_probabilities(server: GunicornServer, reference_model: object) -> None:
    rng = np.random.default_rng(7)
    data = tiff_bytes(_field(rng))
    response = requests.post(f"{server.url}/predict", data=data, headers={"Content-Type": "image/tiff"}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "cpe_cnn" and body["model_version"] >= 1
    [prediction] = body["predictions"]
    expected = _expected(reference_model, [data])[0]
    got = [prediction["probabilities"]["uninfected"], prediction["probabilities"]["infected"]]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_every_input_form(server: GunicornServer, reference_model: object) -> None:
    rng = np.random.default_rng(8)
    tiff8 = tiff_bytes((_field(rng, 255)).astype(np.uint8))
    png_buffer = io.BytesIO()
    Image.fromarray(_field(rng, 255).astype(np.uint8)).save(png_buffer, format="PNG")
    png = png_buffer.getvalue()
    expected = _expected(reference_model, [tiff8, png])

    multipart = requests.post(
        f"{server.url}/predict", files=[("image", ("a.tif", tiff8, "image/tiff")), ("image", ("b.png", png, "image/png"))],
        timeout=60,
    )
    assert multipart.status_code == 200, multipart.text
    as_json = requests.post(
        f"{server.url}/predict",
        json={"instances": [{"b64": base64.b64encode(d).decode(), "well": "C03"} for d in (tiff8, png)]},
        timeout=60,
    )
    assert as_json.status_code == 200, as_json.text
    for body in (multipart.json(), as_json.json()):
        got = np.array([[p["probabilities"]["uninfected"], p["probabilities"]["infected"]] for p in body["predictions"]])
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [p["id"] for p in multipart.json()["predictions"]] == ["a.tif", "b.png"]
    assert as_json.json()["predictions"][1]["well"] == "C03"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"garbage", "image/tiff", 400, "undecodable_image"),
        (b"{}", "application/json", 422, "validation_error"),
        (b"x", "application/pdf", 415, "unsupported_media_type"),
    ],
)
def test_bad_input_over_http(server: GunicornServer, body: bytes, content_type: str, status: int, code: str) -> None:
    response = requests.post(f"{server.url}/predict", data=body, headers={"Content-Type": content_type}, timeout=30)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    # The worker survived: it still answers.
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200


def test_concurrent_clients_are_batched_and_each_gets_its_own_answer(
    server: GunicornServer, reference_model: object
) -> None:
    rng = np.random.default_rng(9)
    encoded = [tiff_bytes(_field(rng)) for _ in range(12)]
    expected = _expected(reference_model, encoded)
    barrier = threading.Barrier(len(encoded))

    def send(data: bytes) -> dict[str, object]:
        barrier.wait(30)
        response = requests.post(f"{server.url}/predict", data=data, headers={"Content-Type": "image/tiff"}, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    with ThreadPoolExecutor(max_workers=len(encoded)) as pool:
        bodies = list(pool.map(send, encoded))
    for body, want in zip(bodies, expected):
        probabilities = body["predictions"][0]["probabilities"]  # type: ignore[index]
        np.testing.assert_allclose([probabilities["uninfected"], probabilities["infected"]], want, atol=1e-5)
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    total = float(re.search(r'^serving_batch_size_images_sum\{model="cpe_cnn"\} (\S+)', metrics, re.M).group(1))
    count = float(re.search(r'^serving_batch_size_images_count\{model="cpe_cnn"\} (\S+)', metrics, re.M).group(1))
    assert total / count > 1.0, "no batch ever held more than one image"


def test_sigterm_under_load_loses_no_accepted_request(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    encoded = [tiff_bytes(_field(rng)) for _ in range(6)]
    server = GunicornServer(tmp_path, batching="fixed", max_batch_size=2, max_batch_delay_ms=10).start()
    results: list[int] = []

    def send(data: bytes) -> None:
        response = requests.post(f"{server.url}/predict", data=data, headers={"Content-Type": "image/tiff"}, timeout=120)
        results.append(response.status_code)

    threads = [threading.Thread(target=send, args=(data,)) for data in encoded]
    for thread in threads:
        thread.start()
    # Terminate once every request is in the worker (queued or running), not before.
    deadline_metrics = f"{server.url}/metrics"
    for _ in range(200):
        text = requests.get(deadline_metrics, timeout=5).text
        match = re.search(r'^serving_queue_depth_images\{model="cpe_cnn"\} (\S+)', text, re.M)
        if match and float(match.group(1)) >= 3:
            break
        threading.Event().wait(0.05)
    exit_code = server.terminate(timeout_s=60)
    for thread in threads:
        thread.join(60)
    assert results == [200] * len(encoded), server.log()[-3000:]
    assert exit_code == 0
