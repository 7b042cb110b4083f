"""The QC/out-of-distribution gate: thresholds from metadata.json applied to a signature's
measures, `?qc=reject|warn|off`, the bit-depth check, and its metrics (FakeBackend)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from PIL import Image
from prometheus_client import REGISTRY

from service import create_app
from service.config import Settings
from service.errors import InvalidInput
from service.models import ModelVersion, VersionMetadata, build_model_info
from tests.conftest import tiff_bytes
from tests.fakes import FAKE_HEIGHT, FAKE_WIDTH, FakeBackend, expected_probabilities

GATE = {
    "checks": [
        {"reason": "out_of_distribution", "output": "ood_score", "warn_above": 10.0, "reject_above": 100.0},
        {"reason": "out_of_focus", "output": "focus_score", "warn_below": 0.5, "reject_below": 0.1},
    ],
    "bit_depths": [12, 16],
}


class GatedModel(FakeBackend):
    """p(infected) from the mean as FakeBackend; the OOD score is the image's max / 100 and
    focus its min / 100, so a test picks each image's verdict through its pixels."""

    def __init__(self) -> None:
        super().__init__()
        metadata = VersionMetadata.model_validate({"classes": ["uninfected", "infected"], "qc": GATE})
        self.info = self.info.__class__(**{**self.info.__dict__, "version": 7, "metadata": metadata,
                                           "extra_outputs": ("focus_score", "ood_score")})

    def predict(self, batch):  # type: ignore[no-untyped-def]
        flat = batch.reshape(len(batch), -1)
        return {"probabilities": expected_probabilities(batch), "ood_score": flat.max(axis=1) / 100,
                "focus_score": flat.min(axis=1) / 100}


@pytest.fixture(scope="module")
def gated_app() -> Iterator[Flask]:
    app = create_app(Settings(model_name="fake", warmup=False), GatedModel())
    assert app.extensions["serving"].wait_ready(5)
    yield app
    app.extensions["serving"].close()


def _field(low: int, high: int, dtype: type = np.uint16) -> bytes:
    pixels = np.full((FAKE_HEIGHT, FAKE_WIDTH), low, dtype)
    pixels[0, 0] = high
    return tiff_bytes(pixels)


def _predict(app: Flask, body: bytes, qc: str | None = None) -> dict:  # type: ignore[type-arg]
    query = f"?qc={qc}" if qc else ""
    response = app.test_client().post(f"/predict{query}", data=body, content_type="image/tiff")
    assert response.status_code == 200, response.json
    return response.json["predictions"][0]  # type: ignore[no-any-return]


def test_in_distribution_images_pass(gated_app: Flask) -> None:
    prediction = _predict(gated_app, _field(900, 4000))  # ood 40 > 10: warn
    assert prediction["qc"]["status"] == "warn" and prediction["qc"]["reasons"] == ["out_of_distribution"]
    prediction = _predict(gated_app, _field(900, 999))  # ood 9.99, focus 9
    assert prediction["qc"] == {"status": "pass", "reasons": []} and prediction["label"]


def test_reject_mode_answers_no_label_for_rejected_images(gated_app: Flask) -> None:
    body = _field(5, 20000)  # ood 200 > 100 (reject), focus 0.05 < 0.1 (reject)
    warned = _predict(gated_app, body)
    assert warned["qc"] == {"status": "reject", "reasons": ["out_of_distribution", "out_of_focus"]}
    assert warned["label"] in ("infected", "uninfected")  # default 'warn' still labels
    rejected = _predict(gated_app, body, "reject")
    assert rejected["label"] is None and rejected["qc"]["status"] == "reject"
    assert "probabilities" in rejected
    off = _predict(gated_app, body, "off")
    assert "qc" not in off and off["label"]


def test_bit_depth_outside_the_training_contract_is_flagged(gated_app: Flask) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.full((FAKE_HEIGHT, FAKE_WIDTH), 900 // 4, np.uint8)).save(buffer, format="PNG")
    response = gated_app.test_client().post("/predict", data=buffer.getvalue(), content_type="image/png")
    assert response.json["predictions"][0]["qc"]["reasons"] == ["bit_depth"]


def test_gate_outcomes_are_counted_by_status_and_reason(gated_app: Flask) -> None:
    labels = {"model": "fake", "version": "7", "reason": "out_of_focus"}
    before = REGISTRY.get_sample_value("serving_qc_reasons_total", labels) or 0.0
    _predict(gated_app, _field(30, 100))  # focus 0.3: warn
    assert REGISTRY.get_sample_value("serving_qc_reasons_total", labels) == before + 1
    assert (REGISTRY.get_sample_value("serving_qc_outcomes_total",
                                      {"model": "fake", "version": "7", "status": "reject"}) or 0) >= 1


def test_csv_rows_carry_the_gate_status(gated_app: Flask) -> None:
    response = gated_app.test_client().post("/predict?qc=reject", data=_field(5, 20000), content_type="image/tiff",
                                            headers={"Accept": "text/csv"})
    header, row = response.get_data(as_text=True).splitlines()
    values = dict(zip(header.split(","), row.split(",")))
    assert values["qc_status"] == "reject" and values["label"] == ""


def test_a_gate_reading_outputs_the_signature_lacks_is_refused_at_load() -> None:
    metadata = VersionMetadata.model_validate({"output": {"tensor": "probabilities"}, "qc": GATE})
    version = ModelVersion("m", 1, Path("/nonexistent"), metadata)
    with pytest.raises(InvalidInput, match="focus_score"):
        build_model_info(version, "serving_default", {"image": [None, 8, 8, 1]}, ["probabilities", "ood_score"])
