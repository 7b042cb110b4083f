"""Bodies are read once, bounded, and kept in memory (service/api/body.py), without a server."""

from __future__ import annotations

import io

import numpy as np
from flask import Flask, request

from service.api.body import InMemoryRequest
from tests.conftest import tiff_bytes
from tests.fakes import FAKE_HEIGHT, FAKE_WIDTH


def test_multipart_parts_stay_in_memory_instead_of_spooling_to_tmp() -> None:
    app = Flask(__name__)
    app.request_class = InMemoryRequest
    big = b"\0" * (2 << 20)  # werkzeug spools parts over 500 KB to a temporary file by default
    with app.test_request_context("/", method="POST", data={"image": (io.BytesIO(big), "a.tif")},
                                  content_type="multipart/form-data"):
        stream = request.files["image"].stream
        assert isinstance(stream, io.BytesIO) and stream.getvalue() == big


def test_a_chunked_body_is_read_whole_when_within_the_limit(app: Flask) -> None:
    pixels = np.random.default_rng(0).integers(0, 4096, (FAKE_HEIGHT, FAKE_WIDTH), dtype=np.uint16)
    data = tiff_bytes(pixels)
    response = app.test_client().post(
        "/predict", input_stream=io.BytesIO(data), content_type="image/tiff",
        environ_overrides={"wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"},
    )
    assert response.status_code == 200, response.json


def test_a_chunked_body_over_the_limit_is_413(app: Flask) -> None:
    limit = app.config["MAX_CONTENT_LENGTH"]
    response = app.test_client().post(
        "/predict", input_stream=io.BytesIO(b"\0" * (limit + 10)), content_type="image/tiff",
        environ_overrides={"wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"},
    )
    assert response.status_code == 413 and response.json["error"]["code"] == "body_too_large"
