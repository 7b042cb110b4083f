"""The service under Gunicorn in front of a real gRPC server speaking TF Serving's protocol.

The server is `tests/tfserving_standin.py` (TF Serving's own binary cannot be installed here):
a real grpc.server with TF Serving's servicer base classes, run as a separate process so it can
be killed and restarted like a TF Serving pod.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf

from service.backends.tfserving_grpc import translate_rpc_error
from service.codecs.images import decode_image
from service.models import resolve
from service.preprocessing import prepare
from tests.conftest import MODEL_REPOSITORY, REPO_ROOT, tiff_bytes
from tests.integration.servers import GunicornServer, free_port
from tests.models import export_flat_model

HEIGHT, WIDTH = 1024, 1360
TIFF = {"Content-Type": "image/tiff"}


class StandIn:
    """The stand-in TF Serving as a child process on a fixed loopback port."""

    def __init__(self, port: int, delay_s: float = 0.0, batch_log: Path | None = None,
                 repository: Path = MODEL_REPOSITORY) -> None:
        self.port = port
        self.repository = repository
        self.delay_s = delay_s
        self.batch_log = batch_log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> StandIn:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.tfserving_standin", "--port", str(self.port),
             "--model-repository", str(self.repository), "--delay-s", str(self.delay_s),
             *(["--enable-batching", "--batch-log", str(self.batch_log)] if self.batch_log else [])],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()  # printed once the port is bound
        assert "stand-in" in line, line
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


def _field(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return tiff_bytes((rng.integers(0, 2048, size=(HEIGHT, WIDTH)) + rng.integers(0, 2048)).astype(np.uint16))


def _grpc_server(tmp: Path, port: int, **settings: object) -> GunicornServer:
    options: dict[str, object] = {
        "backend": "tfserving_grpc", "tfserving_target": f"127.0.0.1:{port}", "max_batch_size": 4,
        "grpc_timeout_s": 5, "load_retry_max_s": 1, **settings,
    }
    return GunicornServer(tmp, **options)


@pytest.fixture(scope="module")
def standin() -> Iterator[StandIn]:
    server = StandIn(free_port()).start()
    yield server
    server.kill()


def test_predictions_equal_the_local_backend(standin: StandIn, tmp_path: Path) -> None:
    encoded = [_field(seed) for seed in range(3)]
    signature = tf.saved_model.load(str(resolve(MODEL_REPOSITORY, "cpe_cnn").path)).signatures["serving_default"]
    batch = np.stack([prepare(decode_image(data), HEIGHT, WIDTH, 1) for data in encoded])
    expected = signature(image=tf.constant(batch))["probabilities"].numpy()
    with _grpc_server(tmp_path, standin.port) as server:
        status = requests.get(f"{server.url}/status", timeout=5).json()
        assert status["backend"] == "tfserving_grpc"
        signature = status["models"]["cpe_cnn"]["signature"]
        assert signature["input"]["shape"] == [None, HEIGHT, WIDTH, 1]  # from GetModelMetadata
        for data, want in zip(encoded, expected):
            response = requests.post(f"{server.url}/predict", data=data, headers=TIFF, timeout=60)
            assert response.status_code == 200, response.text
            p = response.json()["predictions"][0]["probabilities"]
            np.testing.assert_allclose([p["uninfected"], p["infected"]], want, atol=1e-5)


def test_explanations_come_from_tf_servings_explain_signature(standin: StandIn, tmp_path: Path) -> None:
    """The map is TF Serving's answer to Predict on the `explain` signature: the same as the
    SavedModel computes in-process."""
    data = _field(7)
    signature = tf.saved_model.load(str(resolve(MODEL_REPOSITORY, "cpe_cnn").path)).signatures["explain"]
    expected = signature(image=tf.constant(prepare(decode_image(data), HEIGHT, WIDTH, 1)[None]))
    with _grpc_server(tmp_path, standin.port, warmup="false") as server:
        response = requests.post(f"{server.url}/explain?overlay=false", data=data, headers=TIFF, timeout=60)
        assert response.status_code == 200, response.text
        explanation = response.json()["predictions"][0]["explanation"]
    np.testing.assert_allclose(explanation["map"], expected["cam"].numpy()[0], atol=1e-4)
    assert explanation["log_odds"] == pytest.approx(float(expected["log_odds"].numpy()[0]), abs=1e-4)


def test_a_remote_version_without_explain_answers_501(tmp_path: Path) -> None:
    export_flat_model(tmp_path)
    flat = StandIn(free_port(), repository=tmp_path).start()
    try:
        with _grpc_server(tmp_path, flat.port, model_name="flat", model_repository=tmp_path,
                          warmup="false") as server:
            field = tiff_bytes(np.full((32, 40), 1000, np.uint16))
            refused = requests.post(f"{server.url}/explain", data=field, headers=TIFF, timeout=30)
            assert refused.status_code == 501 and refused.json()["error"]["code"] == "explain_unavailable"
            assert requests.post(f"{server.url}/predict", data=field, headers=TIFF, timeout=30).status_code == 200
    finally:
        flat.kill()


def test_batching_in_tf_servings_layer_only(tmp_path: Path) -> None:
    """SERVING_BATCHING=off in front of a batching TF Serving: each API call carries one request,
    and the server merges concurrent calls (the other combination is the default elsewhere)."""
    batch_log = tmp_path / "batches.txt"
    batching = StandIn(free_port(), batch_log=batch_log).start()
    try:
        # A padded batch of 8 full fields takes ~5 s on a 2-core AVX2 machine: more than the
        # 5 s deadline the other tests use.
        with _grpc_server(tmp_path, batching.port, batching="off", batch_threads=8, threads=8,
                          grpc_timeout_s=60) as server:
            batch_log.write_text("")  # forget the warm-up calls
            encoded = [_field(100 + seed) for seed in range(6)]
            with ThreadPoolExecutor(max_workers=6) as pool:
                codes = list(pool.map(lambda data: requests.post(
                    f"{server.url}/predict", data=data, headers=TIFF, timeout=120).status_code, encoded))
            assert codes == [200] * 6
        sizes = [int(line) for line in batch_log.read_text().split()]
        assert sum(sizes) == 6 and max(sizes) > 1, sizes
    finally:
        batching.kill()


def test_down_at_start_then_killed_under_load_then_restarted(tmp_path: Path) -> None:
    port = free_port()
    down = _grpc_server(tmp_path, port).start(wait_ready=False)
    try:
        # Down at start: Gunicorn serves, but is not ready and refuses predictions with 503.
        reason = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "UNAVAILABLE" not in reason:
            ready = requests.get(f"{down.url}/readyz", timeout=5)
            assert ready.status_code == 503
            reason = ready.json().get("reason", "")
            time.sleep(0.2)
        assert "UNAVAILABLE" in reason
        refused = requests.post(f"{down.url}/predict", data=_field(1), headers=TIFF, timeout=10)
        assert refused.status_code == 503 and refused.headers.get("Retry-After")

        # TF Serving comes up: the service finds it without a restart.
        standin = StandIn(port).start()
        down.wait_ready()
        assert requests.post(f"{down.url}/predict", data=_field(2), headers=TIFF, timeout=60).status_code == 200

        # Killed under load: every request ends (200 or 503) well within the deadline.
        def send(seed: int) -> tuple[int, float]:
            started = time.monotonic()
            response = requests.post(f"{down.url}/predict", data=_field(seed), headers=TIFF, timeout=60)
            return response.status_code, time.monotonic() - started

        with ThreadPoolExecutor(max_workers=8) as pool:
            pending = [pool.submit(send, seed) for seed in range(8)]
            time.sleep(0.5)
            standin.kill()
            outcomes = [future.result(timeout=60) for future in pending]
        assert all(code in (200, 503) for code, _ in outcomes), outcomes
        assert any(code == 503 for code, _ in outcomes), outcomes
        assert max(elapsed for _, elapsed in outcomes) < 5 + 10  # grpc_timeout_s + decoding slack
        after = requests.post(f"{down.url}/predict", data=_field(3), headers=TIFF, timeout=30)
        assert after.status_code == 503 and after.json()["error"]["code"] in ("backend_unavailable", "model_not_ready")

        # Restarted: answers again, same Gunicorn process.
        standin = StandIn(port).start()
        deadline = time.monotonic() + 30
        status = 0
        while time.monotonic() < deadline and status != 200:
            status = requests.post(f"{down.url}/predict", data=_field(4), headers=TIFF, timeout=30).status_code
            time.sleep(0.3)
        assert status == 200
        standin.kill()
    finally:
        down.terminate()


def test_deadline_exceeded_is_504(tmp_path: Path) -> None:
    slow = StandIn(free_port(), delay_s=3.0).start()
    try:
        # Warm-up would also time out against a slow server: skip it for this check.
        with _grpc_server(tmp_path, slow.port, grpc_timeout_s=1, warmup="false") as server:
            response = requests.post(f"{server.url}/predict", data=_field(5), headers=TIFF, timeout=30)
            assert response.status_code == 504
            assert response.json()["error"]["code"] == "timeout"
    finally:
        slow.kill()


def test_wrong_signature_is_caught_from_metadata(standin: StandIn, tmp_path: Path) -> None:
    server = _grpc_server(tmp_path, standin.port, signature_name="nope", ready_timeout_s=5)
    with pytest.raises(TimeoutError):
        server.start()
    try:
        reason, deadline = "", time.monotonic() + 60
        while "signature" not in reason and time.monotonic() < deadline:
            reason = requests.get(f"{server.url}/readyz", timeout=5).json()["reason"]
            time.sleep(0.2)
        assert "InvalidInput" in reason and "no signature 'nope'" in reason
        response = requests.post(f"{server.url}/predict", data=_field(6), headers=TIFF, timeout=10)
        assert response.status_code == 503 and "nope" in response.json()["error"]["message"]
    finally:
        server.terminate()


class _FakeRpcError(grpc.RpcError):
    """A grpc.RpcError with a chosen status (grpc offers no public constructor for one)."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "details"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.INTERNAL, 502),
    ],
)
def test_grpc_status_maps_to_http(code: grpc.StatusCode, status: int) -> None:
    assert translate_rpc_error(_FakeRpcError(code), "Predict").status_code == status
