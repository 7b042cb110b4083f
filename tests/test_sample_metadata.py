"""Plate, well, site, channel and time point travel with every image on every /predict path,
wells in one canonical form (shared with cpe-client), and `Accept: text/csv` answers rows."""

from __future__ import annotations

import csv
import hashlib
import io
import json

import numpy as np
import pytest
from flask.testing import FlaskClient

from service.api.predict import CSV_COLUMNS
from tests.conftest import tiff_bytes
from tests.fakes import FAKE_HEIGHT, FAKE_WIDTH


def _image(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 4096, (FAKE_HEIGHT, FAKE_WIDTH), dtype=np.uint16)
    return tiff_bytes(pixels)


def test_multipart_metadata_part_is_echoed_in_order(client: FlaskClient) -> None:
    metadata = [{"plate": "P1", "well": "b7", "site": 1, "channel": "w1", "time_point": 2},
                {"id": "mine", "plate": "P1", "well": "r02c07", "site": 2}]
    files = [(io.BytesIO(_image(i)), f"f{i}.tif") for i in range(2)]
    response = client.post("/predict", data={"image": files, "metadata": json.dumps(metadata)},
                           content_type="multipart/form-data")
    assert response.status_code == 200, response.json
    first, second = response.json["predictions"]
    assert first | {"probabilities": None, "label": None, "input": None} == {
        "id": "f0.tif", "plate": "P1", "well": "B07", "site": 1, "channel": "w1", "time_point": 2,
        "probabilities": None, "label": None, "input": None, "model": "fake", "model_version": 1}
    assert second["id"] == "mine" and second["well"] == "B07" and "channel" not in second


@pytest.mark.parametrize(("metadata", "status"), [
    ("[{}]", 400),  # one object for two images
    ("{\"plate\": \"P1\"}", 400),
    ("[{\"well\": \"Z99\"}, {}]", 422),
    ("[{\"site\": -1}, {}]", 422),
    ("[not json", 400),
])
def test_bad_metadata_parts_are_4xx(client: FlaskClient, metadata: str, status: int) -> None:
    files = [(io.BytesIO(_image(i)), f"f{i}.tif") for i in range(2)]
    response = client.post("/predict", data={"image": files, "metadata": metadata}, content_type="multipart/form-data")
    assert response.status_code == status, response.json


def test_raw_body_metadata_comes_from_the_query(client: FlaskClient) -> None:
    response = client.post("/predict?plate=P9&well=p24&site=3&id=x.tif&time_point=0", data=_image(0),
                           content_type="image/tiff")
    [prediction] = response.json["predictions"]
    assert (prediction["plate"], prediction["well"], prediction["site"], prediction["id"]) == ("P9", "P24", 3, "x.tif")
    assert prediction["time_point"] == 0
    assert client.post("/predict?well=AG1", data=_image(0), content_type="image/tiff").status_code == 422


@pytest.mark.parametrize(("given", "canonical"), [("b7", "B07"), ("B7", "B07"), ("B07", "B07"),
                                                  ("r02c07", "B07"), ("AF48", "AF48"), ("a1", "A01")])
def test_json_wells_are_normalised(client: FlaskClient, given: str, canonical: str) -> None:
    import base64

    instance = {"b64": base64.b64encode(_image(0)).decode(), "well": given}
    response = client.post("/predict", json={"instances": [instance]})
    assert response.status_code == 200 and response.json["predictions"][0]["well"] == canonical


def test_accept_csv_answers_one_row_per_image(client: FlaskClient) -> None:
    images = [_image(i) for i in range(3)]
    metadata = [{"plate": "P1", "well": f"A{i + 1}", "site": i} for i in range(3)]
    response = client.post("/predict", data={"image": [(io.BytesIO(b), f"s{i}.tif") for i, b in enumerate(images)],
                                             "metadata": json.dumps(metadata)},
                           content_type="multipart/form-data", headers={"Accept": "text/csv"})
    assert response.status_code == 200 and response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 3
    assert [row["Metadata_Well"] for row in rows] == ["A01", "A02", "A03"]
    assert [row["input_sha256"] for row in rows] == [hashlib.sha256(b).hexdigest() for b in images]
    assert {row["request_id"] for row in rows} == {response.headers["X-Request-ID"]}
    assert all(0.0 <= float(row["p_infected"]) <= 1.0 and row["model_name"] == "fake" for row in rows)


def test_status_publishes_the_limits_clients_pack_by(client: FlaskClient) -> None:
    limits = client.get("/status").json["limits"]
    assert limits["max_images_per_request"] == 64 and limits["max_body_bytes"] == 64 * 1024 * 1024
