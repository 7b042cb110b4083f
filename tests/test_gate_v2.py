"""The committed model's gate through the service: images that are not phase-contrast
monolayers are flagged, and refused (label null) under ?qc=reject; a synthetic field passes."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
import tifffile
from flask import Flask

from tests.conftest import serve_committed_model
from tests.test_codecs import _package_file
from training import synthetic


@pytest.fixture(scope="module")
def app() -> Iterator[Flask]:
    yield from serve_committed_model(model_version=2)


def _post(app: Flask, data: bytes, content_type: str, qc: str) -> dict:  # type: ignore[type-arg]
    response = app.test_client().post(f"/predict?qc={qc}", data=data, content_type=content_type)
    assert response.status_code == 200, response.json
    return response.json["predictions"][0]  # type: ignore[no-any-return]


def test_fluorescence_nuclei_are_refused_under_qc_reject(app: Flask) -> None:
    data = _package_file("mahotas", "demos/data/nuclear.png").read_bytes()  # fluorescence nuclei
    warned = _post(app, data, "image/png", "warn")
    assert warned["qc"]["status"] == "reject" and "not_phase_contrast" in warned["qc"]["reasons"]
    assert warned["label"] is not None  # 'warn' reports, still labels
    refused = _post(app, data, "image/png", "reject")
    assert refused["label"] is None and refused["qc"]["status"] == "reject"


def test_stardist_fluorescence_tiff_is_flagged(app: Flask) -> None:
    data = _package_file("stardist", "data/images/img2d.tif").read_bytes()
    assert _post(app, data, "image/tiff", "warn")["qc"]["status"] != "pass"


def test_a_synthetic_monolayer_passes(app: Flask) -> None:
    pixels, _ = synthetic.generate(2_000_123, synthetic.INFLUENZA, 3)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels)
    prediction = _post(app, buffer.getvalue(), "image/tiff", "reject")
    assert prediction["qc"] == {"status": "pass", "reasons": []} and prediction["label"] == "infected"
