"""Every answer says what produced it; this test recomputes each field from the files."""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Iterator

import numpy as np
import pytest
from flask import Flask
from tensorflow.core.protobuf import fingerprint_pb2

from tests.conftest import MODEL_REPOSITORY, REPO_ROOT, serve_committed_model, tiff_bytes

VERSION_DIR = MODEL_REPOSITORY / "cpe_cnn" / "1"


@pytest.fixture(scope="module")
def app() -> Iterator[Flask]:
    yield from serve_committed_model(model_version=1)


def test_predict_answers_carry_provenance_recomputable_from_the_files(app: Flask) -> None:
    pixels = np.random.default_rng(3).integers(0, 4096, (300, 400), dtype=np.uint16)  # 12-bit data
    body = tiff_bytes(pixels)
    answer = app.test_client().post("/predict", data=body, content_type="image/tiff").json
    metadata = json.loads((VERSION_DIR / "metadata.json").read_text())
    fingerprint = fingerprint_pb2.FingerprintDef.FromString((VERSION_DIR / "fingerprint.pb").read_bytes())
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert answer["provenance"] == {
        "service_version": project["version"],
        "model": "cpe_cnn",
        "model_version": 1,
        "savedmodel_fingerprint": str(fingerprint.saved_model_checksum),
        "preprocessing_version": metadata["preprocessing"]["version"],
        "preprocessing_sha256": metadata["preprocessing"]["sha256"],
    }  # no decision_threshold in v1's metadata: argmax labels
    [prediction] = answer["predictions"]
    assert prediction["input"] == {"sha256": hashlib.sha256(body).hexdigest(), "shape": [300, 400],
                                   "dtype": "uint16", "bit_depth": 12}


def test_open_inference_answers_carry_it_as_parameters(app: Flask) -> None:
    import base64

    body = tiff_bytes(np.full((64, 64), 60000, np.uint16))
    request = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                           "data": [base64.b64encode(body).decode()]}]}
    answer = app.test_client().post("/v2/models/cpe_cnn/infer", json=request).json
    assert answer["parameters"]["model_version"] == 1
    assert answer["parameters"]["savedmodel_fingerprint"].isdigit()
