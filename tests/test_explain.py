"""Explanations in-process: which versions can explain, the bounded path, tiles, the overlay."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest
from flask import Flask
from numpy.typing import NDArray
from PIL import Image

from service import create_app
from service.config import Settings
from service.explain import Explanation, overlay_png, place
from tests.conftest import tiff_bytes
from tests.fakes import FAKE_HEIGHT, FAKE_WIDTH, FakeBackend
from tests.models import export_flat_model, export_tiny_model
from training.gradcam import make_explain
from training.model import OUTPUT_KEY

TIFF = "image/tiff"


def _serve(repository: Path, name: str, **settings: object) -> Iterator[Flask]:
    app = create_app(Settings(model_repository=repository, model_name=name, warmup=False,  # type: ignore[arg-type]
                              repository_poll_interval_s=0, **settings))
    manager = app.extensions["serving"]
    assert manager.wait_ready(60), manager.not_ready_reason()
    yield app
    manager.close()


def _field(height: int, width: int, seed: int = 0) -> bytes:
    return tiff_bytes(np.random.default_rng(seed).integers(0, 4096, (height, width)).astype(np.uint16))


@pytest.fixture
def flat_app(tmp_path: Path) -> Iterator[Flask]:
    """A real SavedModel with no convolution: exported without an explain signature."""
    export_flat_model(tmp_path)
    yield from _serve(tmp_path, "flat")


@pytest.fixture
def tiny_app(tmp_path: Path) -> Iterator[Flask]:
    export_tiny_model(tmp_path)  # Conv2D(4, 3) -> global pooling -> softmax: a 30 x 38 map
    yield from _serve(tmp_path, "tiny")


def test_a_version_without_the_signature_answers_501(flat_app: Flask) -> None:
    client = flat_app.test_client()
    refused = client.post("/explain", data=_field(32, 40), content_type=TIFF)
    assert refused.status_code == 501 and refused.get_json()["error"]["code"] == "explain_unavailable"
    assert client.post("/predict?explain=true", data=_field(32, 40), content_type=TIFF).status_code == 501
    assert client.post("/predict", data=_field(32, 40), content_type=TIFF).status_code == 200


def test_a_tiled_image_is_explained_by_its_best_tile(tiny_app: Flask) -> None:
    client = tiny_app.test_client()
    whole = client.post("/explain", data=_field(32, 40), content_type=TIFF).get_json()["predictions"][0]
    assert whole["explanation"]["grid"] == [30, 38] and "tile" not in whole["explanation"]
    tiled = client.post("/explain?tiling=always", data=_field(64, 80, seed=3), content_type=TIFF)
    row = tiled.get_json()["predictions"][0]
    best = int(np.argmax(np.array(row["tiling"]["p_grid"]).ravel()))
    assert row["explanation"]["tile"] == best
    assert row["explanation"]["grid"] == [30, 38]


class _ExplainingFake(FakeBackend):
    """NOTE: a fake because the test must hold one explanation in flight for as long as it
    likes, which a real model cannot be made to do."""

    def __init__(self) -> None:
        super().__init__()
        self.info = replace(self.info, explain_signature="explain")
        self.explaining = threading.Event()
        self.release = threading.Event()

    def explain(self, batch: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        self.explaining.set()
        self.release.wait(timeout=10)
        return {"cam": np.ones((len(batch), 2, 3), np.float32), "log_odds": np.zeros(len(batch), np.float32)}


def test_explanations_past_the_bound_are_shed_with_retry_after() -> None:
    backend = _ExplainingFake()
    app = create_app(Settings(model_name="fake", warmup=False, explain_max_concurrency=1, explain_max_wait_s=0,
                              request_timeout_s=20), backend)
    manager = app.extensions["serving"]
    assert manager.wait_ready(10)
    field = _field(FAKE_HEIGHT, FAKE_WIDTH)
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(lambda: app.test_client().post("/explain", data=field, content_type=TIFF))
            assert backend.explaining.wait(10)
            shed = app.test_client().post("/explain", data=field, content_type=TIFF)
            assert shed.status_code == 503 and shed.get_json()["error"]["code"] == "queue_full"
            assert int(shed.headers["Retry-After"]) >= 1
            # Predictions do not wait for explanations: they have the batcher.
            assert app.test_client().post("/predict", data=field, content_type=TIFF).status_code == 200
            backend.release.set()
            assert first.result(timeout=20).status_code == 200
    finally:
        backend.release.set()
        manager.close(timeout_s=5)


def test_the_overlay_is_hot_where_the_map_is() -> None:
    cam = np.zeros((4, 6), np.float32)
    cam[0, 0] = 1.0  # top-left
    image = np.random.default_rng(0).uniform(100, 200, (400, 600, 1)).astype(np.float32)
    png = overlay_png(Explanation(cam, 2.0, image), max_side_px=300)
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)
    assert rgb.shape == (200, 300, 3)
    redness = rgb[..., 0] - rgb[..., 2]
    assert redness[:25, :25].mean() > 60 > abs(redness[-50:, -50:].mean())


def test_each_cell_is_placed_at_its_receptive_fields_centre() -> None:
    cam = np.zeros((14, 19), np.float32)
    cam[3, 5] = 1.0
    heat = place(cam, 1024, 1360, (112.5, 112.5), (60.0, 60.0))
    assert np.unravel_index(np.argmax(heat), heat.shape) in {(292, 412), (292, 413), (293, 412), (293, 413)}
    assert heat[:100, :].max() == 0 and heat[0, 0] == 0  # beyond the outer centres: the outer cells' value
    half = place(cam, 512, 680, (112.5, 112.5), (60.0, 60.0), scale=0.5)
    assert np.unravel_index(np.argmax(half), half.shape) in {(146, 206), (146, 205), (145, 206), (145, 205)}


def test_only_a_chain_after_the_last_convolution_can_be_explained() -> None:
    inputs = keras.Input((8, 8, 1))
    first = keras.layers.Conv2D(2, 3)(inputs)
    second = keras.layers.Conv2D(2, 1)(first)
    merged = keras.layers.Flatten()(keras.layers.Add()([first, second]))
    branching = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(merged))
    assert make_explain(branching, 1, OUTPUT_KEY) is None
    chain = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(first)))
    assert make_explain(chain, 1, OUTPUT_KEY) is not None
