"""TF Serving REST v1 and Open Inference Protocol v2 against Gunicorn, several models at once,
and hot reload of new versions under load. v2 is spoken by the real `tritonclient[http]`."""

from __future__ import annotations

import base64
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import tiff_bytes
from tests.integration.servers import GunicornServer
from tests.models import export_tiny_model


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repository")
    export_tiny_model(repo, "tiny", 1, warmup_records=True)
    export_tiny_model(repo, "tiny_rgb", 1, height=48, width=48, channels=3, seed=1)
    return repo


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    with GunicornServer(
        tmp_path_factory.mktemp("gunicorn"), model_repository=repository, model_name="tiny",
        repository_poll_interval_s=0.5, max_batch_size=4, threads=8,
    ) as running:
        yield running


@pytest.fixture
def client(server: GunicornServer) -> Iterator[triton.InferenceServerClient]:
    connection = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield connection
    connection.close()


def _pixels(seed: int, shape: tuple[int, ...] = (32, 40)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 2000, size=shape) + rng.integers(0, 2000)).astype(np.uint16)


def _predict_probabilities(server: GunicornServer, data: bytes, model: str = "tiny") -> list[float]:
    # tiling=never: compared with v2, which answers each input resized as a whole
    response = requests.post(f"{server.url}/predict?model={model}&tiling=never", data=data, headers={"Content-Type": "image/tiff"}, timeout=30)
    assert response.status_code == 200, response.text
    p = response.json()["predictions"][0]["probabilities"]
    return [p["uninfected"], p["infected"]]


# --- Open Inference Protocol v2, through tritonclient --------------------------------------------


def test_v2_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny") and client.is_model_ready("tiny", "1")
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    metadata = client.get_model_metadata("tiny")
    assert metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 32, 40, 1]}]
    assert [o["name"] for o in metadata["outputs"]] == ["probabilities", "label"]


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("datatype", ["FP32", "UINT16"])
def test_v2_infer_pixel_tensors(server: GunicornServer, client: triton.InferenceServerClient, binary: bool, datatype: str) -> None:
    images = np.stack([_pixels(seed) for seed in range(3)])[..., np.newaxis]
    array = images.astype(np.float32 if datatype == "FP32" else np.uint16)
    tensor = triton.InferInput("image", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary),
               triton.InferRequestedOutput("label", binary_data=binary)]
    result = client.infer("tiny", [tensor], outputs=outputs, request_id="plate-7")
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (3, 2)
    expected = [_predict_probabilities(server, tiff_bytes(image[..., 0])) for image in images]
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    labels = [label.decode() if isinstance(label, bytes) else label for label in result.as_numpy("label")]
    assert labels == [("uninfected", "infected")[int(np.argmax(row))] for row in probabilities]
    assert result.get_response()["id"] == "plate-7"


def test_v2_infer_encoded_tiffs_as_bytes(server: GunicornServer, client: triton.InferenceServerClient) -> None:
    encoded = [tiff_bytes(_pixels(seed, (64, 80))) for seed in (10, 11)]
    tensor = triton.InferInput("image", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(encoded, dtype=np.object_), binary_data=True)
    result = client.infer("tiny", [tensor])
    expected = [_predict_probabilities(server, data) for data in encoded]
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)


def test_v2_errors(server: GunicornServer, client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("wrong", [1, 32, 40], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 32, 40), np.float32))
    with pytest.raises(InferenceServerException, match="unexpected inference input 'wrong'"):
        client.infer("tiny", [tensor])
    with pytest.raises(InferenceServerException):
        client.get_model_metadata("nope")
    assert not client.is_model_ready("nope")
    response = requests.post(f"{server.url}/v2/models/tiny/infer", json={"inputs": []}, timeout=10)
    assert response.status_code == 400 and isinstance(response.json()["error"], str)


# --- TF Serving REST v1 ------------------------------------------------------------------------


def test_v1_status_and_metadata_match_tf_serving(server: GunicornServer) -> None:
    status = requests.get(f"{server.url}/v1/models/tiny", timeout=10).json()
    assert status == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert requests.get(f"{server.url}/v1/models/tiny/versions/1", timeout=10).json() == status
    metadata = requests.get(f"{server.url}/v1/models/tiny/metadata", timeout=10).json()
    assert metadata["model_spec"] == {"name": "tiny", "signature_name": "", "version": "1"}
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    dims = [d["size"] for d in signature["inputs"]["image"]["tensor_shape"]["dim"]]
    assert dims == ["-1", "32", "40", "1"] and signature["inputs"]["image"]["dtype"] == "DT_FLOAT"


def test_v1_predict_row_columnar_and_b64(server: GunicornServer) -> None:
    pixels = [_pixels(seed) for seed in (20, 21)]
    expected = [_predict_probabilities(server, tiff_bytes(p)) for p in pixels]
    url = f"{server.url}/v1/models/tiny:predict"
    row = requests.post(url, json={"signature_name": "serving_default", "instances": [p.tolist() for p in pixels]}, timeout=30)
    assert row.status_code == 200, row.text
    np.testing.assert_allclose(row.json()["predictions"], expected, atol=1e-5)
    columnar = requests.post(url, json={"inputs": {"image": [p.tolist() for p in pixels]}}, timeout=30)
    np.testing.assert_allclose(columnar.json()["outputs"], expected, atol=1e-5)
    b64 = requests.post(
        f"{server.url}/v1/models/tiny/versions/1:predict",
        json={"instances": [{"b64": base64.b64encode(tiff_bytes(p)).decode()} for p in pixels]}, timeout=30,
    )
    np.testing.assert_allclose(b64.json()["predictions"], expected, atol=1e-5)


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/models/nope:predict", {"instances": [[1.0]]}, 404, "not served"),
        ("/v1/models/tiny/versions/9:predict", {"instances": [[1.0]]}, 404, "no version 9"),
        ("/v1/models/tiny:predict", {"signature_name": "x", "instances": [[[1.0] * 40] * 32]}, 400, 'Serving signature name: "x"'),
        ("/v1/models/tiny:predict", {"instances": [{"b64": "!!"}]}, 400, "base64"),
        ("/v1/models/tiny:predict", {"instances": [[[1, 2], [3]]]}, 400, "instance 0"),
        ("/v1/models/tiny:predict", {"instances": [[1, 2]]}, 400, "not a gray or RGB image"),
        ("/v1/models/tiny:predict", {"instances": [], "inputs": []}, 400, "exactly one"),
    ],
)
def test_v1_errors_are_tf_serving_shaped(server: GunicornServer, path: str, body: object, status: int, message: str) -> None:
    response = requests.post(f"{server.url}{path}", json=body, timeout=10)
    assert response.status_code == status, response.text
    assert isinstance(response.json()["error"], str) and message in response.json()["error"]


def test_several_models_and_signature_driven_decoding(server: GunicornServer) -> None:
    ready = requests.get(f"{server.url}/readyz", timeout=5).json()
    assert ready["models"] == {"tiny": [1], "tiny_rgb": [1]}
    gray = tiff_bytes(_pixels(30, (100, 120)))
    assert len(_predict_probabilities(server, gray, model="tiny_rgb")) == 2  # gray -> 48x48x3
    status = requests.get(f"{server.url}/status", timeout=5).json()
    assert status["models"]["tiny_rgb"]["signature"]["input"]["shape"] == [None, 48, 48, 3]
    assert status["models"]["tiny"]["versions"][0]["warmup"] == "tf_serving_warmup_requests"
    assert status["models"]["tiny_rgb"]["versions"][0]["warmup"] == "synthetic"
    assert requests.get(f"{server.url}/v1/models/missing", timeout=5).status_code == 404


# --- hot reload ------------------------------------------------------------------------------------


def _wait_for(predicate: object, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def test_new_version_swaps_in_under_load_and_a_broken_one_is_refused(
    server: GunicornServer, repository: Path, tmp_path: Path
) -> None:
    stop = threading.Event()
    outcomes: list[tuple[int, int]] = []
    data = tiff_bytes(_pixels(40))

    def load() -> None:
        while not stop.is_set():
            response = requests.post(f"{server.url}/predict?model=tiny", data=data, headers={"Content-Type": "image/tiff"}, timeout=30)
            version = response.json()["model_version"] if response.status_code == 200 else -1
            outcomes.append((response.status_code, version))

    senders = [threading.Thread(target=load) for _ in range(4)]
    for sender in senders:
        sender.start()
    try:
        # A new version appears atomically (exported elsewhere, then renamed), as export_model does.
        staged = export_tiny_model(tmp_path, "tiny", 2, seed=7)
        shutil.move(str(staged), str(repository / "tiny" / "2"))
        _wait_for(lambda: any(version == 2 for _, version in outcomes[-4:]))
        _wait_for(lambda: requests.get(f"{server.url}/v1/models/tiny", timeout=5).json()["model_version_status"]
                  == [{"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}])

        # A corrupt version 3: reported, and version 2 keeps serving.
        broken = repository / "tiny" / ".3.partial"
        (broken / "variables").mkdir(parents=True)
        (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
        broken.rename(repository / "tiny" / "3")
        _wait_for(lambda: any(entry["version"] == "3" and entry["state"] == "END"
                              for entry in requests.get(f"{server.url}/v1/models/tiny", timeout=5).json()["model_version_status"]))
        count_before = len(outcomes)
        _wait_for(lambda: len(outcomes) > count_before + 8)
    finally:
        stop.set()
        for sender in senders:
            sender.join(30)
    assert outcomes and all(code == 200 for code, _ in outcomes), [o for o in outcomes if o[0] != 200][:5]
    assert {version for _, version in outcomes} == {1, 2}
    assert outcomes[-1][1] == 2
    status = requests.get(f"{server.url}/v1/models/tiny", timeout=5).json()["model_version_status"]
    broken_entry = next(entry for entry in status if entry["version"] == "3")
    assert broken_entry["status"]["error_code"] != "OK" and broken_entry["status"]["error_message"]
    metrics = requests.get(f"{server.url}/metrics", timeout=5).text
    assert 'serving_model_loads_total{model="tiny",outcome="failed",version="3"}' in metrics
    assert requests.get(f"{server.url}/readyz", timeout=5).status_code == 200
