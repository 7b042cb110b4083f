"""The service adapts to a SavedModel's signature: a Keras ResNet50 (RGB, 64x64, 3 classes),
exported like the committed model, served from a temporary repository by the real embedded
backend. Weights are random (`weights=None`): nothing can be downloaded here."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from service import create_app
from service.config import Settings
from tests.conftest import tiff_bytes
from training.model import export_model


@pytest.fixture(scope="module")
def resnet_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("classic")
    keras.utils.set_random_seed(0)
    backbone = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=3)
    inputs = keras.Input((64, 64, 3), name="image")
    model = keras.Model(inputs, backbone(inputs))
    export_model(model, repository / "resnet50" / "1", model_name="resnet50", classes=("a", "b", "c"))
    return repository


def test_resnet50_signature_drives_decoding(resnet_repository: Path) -> None:
    app = create_app(Settings(model_repository=resnet_repository, model_name="resnet50",
                              repository_poll_interval_s=0, max_batch_size=2))
    manager = app.extensions["serving"]
    try:
        assert manager.wait_ready(180), manager.not_ready_reason()
        client = app.test_client()
        signature = client.get("/status").json["models"]["resnet50"]["signature"]
        assert signature["input"]["shape"] == [None, 64, 64, 3]
        assert signature["classes"] == ["a", "b", "c"]
        rng = np.random.default_rng(0)
        gray_16bit = tiff_bytes(rng.integers(0, 4096, size=(100, 120), dtype=np.uint16))
        rgb_8bit = tiff_bytes(rng.integers(0, 255, size=(80, 80, 3), dtype=np.uint8), photometric="rgb")
        for data in (gray_16bit, rgb_8bit):
            response = client.post("/predict", data=data, content_type="image/tiff")
            assert response.status_code == 200, response.json
            [prediction] = response.json["predictions"]
            assert set(prediction["probabilities"]) == {"a", "b", "c"}
            assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    finally:
        manager.close()
