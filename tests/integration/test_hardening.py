"""Hostile and careless clients against real Gunicorn: unbounded labels, slow and oversized
bodies, deep JSON, non-finite numbers. Each case once broke or starved a worker."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.conftest import tiff_bytes
from tests.integration.servers import GunicornServer
from tests.models import export_tiny_model

READ_TIMEOUT_S = 2.0
MAX_BODY_BYTES = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    root = tmp_path_factory.mktemp("hardening")
    export_tiny_model(root / "repo", "tiny", 1)
    with GunicornServer(root, model_repository=root / "repo", model_name="tiny", threads=8,
                        max_batch_size=4, repository_poll_interval_s=0, request_read_timeout_s=READ_TIMEOUT_S,
                        max_body_bytes=MAX_BODY_BYTES) as started:
        yield started


def _series(exposition: str) -> int:
    return sum(1 for line in exposition.splitlines() if line and not line.startswith("#"))


def _dir_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.glob("*.db"))


def test_random_model_names_create_no_metric_series(server: GunicornServer) -> None:
    session = requests.Session()
    v2_body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["eA=="]}]}

    def probe(name: str) -> set[int]:
        with requests.Session() as client:
            return {
                client.get(f"{server.url}/v1/models/{name}", timeout=10).status_code,
                client.get(f"{server.url}/v1/models/{name}/metadata", timeout=10).status_code,
                client.post(f"{server.url}/v1/models/{name}:predict", json={"instances": [{"b64": "eA=="}]},
                            timeout=10).status_code,
                client.get(f"{server.url}/v2/models/{name}", timeout=10).status_code,
                client.get(f"{server.url}/v2/models/{name}/ready", timeout=10).status_code,
                client.post(f"{server.url}/v2/models/{name}/infer", json=v2_body, timeout=10).status_code,
                client.post(f"{server.url}/predict?model={name}", data=b"x",
                            headers={"Content-Type": "image/png"}, timeout=10).status_code,
            }

    with ThreadPoolExecutor(8) as pool:
        # A first few unknown names create each route's (model="unknown", 4xx) series once ...
        assert set().union(*pool.map(probe, [secrets.token_hex(8) for _ in range(8)])) == {404}
        baseline_series = _series(session.get(f"{server.url}/metrics", timeout=10).text)
        baseline_bytes = _dir_bytes(server.metrics_dir)
        # ... and 1,000 more (7,000 requests) add nothing.
        names = [secrets.token_hex(8) for _ in range(1000)]
        assert set().union(*pool.map(probe, names)) == {404}
    exposition = session.get(f"{server.url}/metrics", timeout=10).text
    assert not any(name in exposition for name in names)
    assert _series(exposition) == baseline_series
    assert _dir_bytes(server.metrics_dir) == baseline_bytes


def _connect(server: GunicornServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def _read_response(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_stalled_bodies_hold_no_thread_and_get_408(server: GunicornServer) -> None:
    stalled = []
    for _ in range(16):  # twice the worker's 8 threads
        sock = _connect(server)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/tiff\r\n"
                     b"Content-Length: 200000\r\n\r\n" + b"\0" * 1024)
        stalled.append(sock)
    # Normal traffic is answered while every stalled upload is still waiting for its 408: the
    # event loop reads requests whole before they get a thread, so the stalled ones hold none.
    image = tiff_bytes(np.zeros((32, 40), np.uint16))
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: requests.post(f"{server.url}/predict", data=image, timeout=30,
                                                        headers={"Content-Type": "image/tiff"}), range(16)))
    assert [answer.status_code for answer in answers] == [200] * 16
    assert requests.get(f"{server.url}/healthz", timeout=30).status_code == 200
    for sock in stalled:
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing answered yet: still within the deadline
            sock.recv(1)
        sock.setblocking(True)
    started = time.monotonic()
    answers = [_read_response(sock) for sock in stalled]
    assert time.monotonic() - started < 2 * READ_TIMEOUT_S
    assert all(answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer for answer in answers), answers[0]
    for sock in stalled:
        sock.close()
    assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 200


def test_expect_continue_pipelining_and_chunked_bodies_are_read_whole(server: GunicornServer) -> None:
    image = tiff_bytes(np.zeros((32, 40), np.uint16))
    head = (b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/tiff\r\n"
            b"Expect: 100-continue\r\nContent-Length: " + str(len(image)).encode() + b"\r\n\r\n")
    with _connect(server) as sock:
        sock.sendall(head)
        assert sock.recv(64) == b"HTTP/1.1 100 Continue\r\n\r\n"  # before the body is sent
        sock.sendall(image)
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200") and b"100 Continue" not in answer  # only once
    with _connect(server) as sock:  # two requests in one write, answered in order
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n"
                     b"Connection: close\r\n\r\n")
        answer = _read_response(sock)
        assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1 404") == 1

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(image), 1000):
            yield image[start:start + 1000]

    response = requests.post(f"{server.url}/predict", data=chunks(), headers={"Content-Type": "image/tiff"},
                             timeout=30)
    assert response.status_code == 200, response.text


def test_uploads_larger_than_the_buffer_budget_all_arrive(tmp_path: Path) -> None:
    export_tiny_model(tmp_path / "repo", "tiny", 1)
    image = tiff_bytes(np.random.default_rng(0).integers(0, 4096, (400, 500), np.uint16))  # ~400 KB
    with (GunicornServer(tmp_path, model_repository=tmp_path / "repo", model_name="tiny", threads=4,
                         repository_poll_interval_s=0, request_buffer_bytes=100_000) as small,
          ThreadPoolExecutor(6) as pool):
        answers = list(pool.map(lambda _: requests.post(f"{small.url}/predict", data=image, timeout=60,
                                                        headers={"Content-Type": "image/tiff"}), range(12)))
    assert [answer.status_code for answer in answers] == [200] * 12


def test_stalled_headers_get_408(server: GunicornServer) -> None:
    sock = _connect(server)
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: test\r\n")
    started = time.monotonic()
    answer = _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 2 * READ_TIMEOUT_S
    sock.close()


def test_a_chunked_body_over_the_limit_is_413_not_truncated(server: GunicornServer) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(3):
            yield b"\0" * (MAX_BODY_BYTES // 2 + 1)

    response = requests.post(f"{server.url}/predict", data=chunks(), headers={"Content-Type": "image/tiff"},
                             timeout=30)
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    response = requests.post(f"{server.url}/v1/models/tiny:predict", data=chunks(),
                             headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 413 and isinstance(response.json()["error"], str)


def test_api_keys_end_to_end_and_refused_before_the_body_is_read(tmp_path: Path) -> None:
    export_tiny_model(tmp_path / "repo", "tiny", 1)
    with GunicornServer(tmp_path, model_repository=tmp_path / "repo", model_name="tiny", api_keys="k-1,k-2",
                        repository_poll_interval_s=0, request_read_timeout_s=10) as keyed:
        image = tiff_bytes(np.zeros((32, 40), np.uint16))
        url = f"{keyed.url}/predict"
        refused = requests.post(url, data=image, headers={"Content-Type": "image/tiff"}, timeout=10)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
        ok = requests.post(url, data=image, headers={"Content-Type": "image/tiff", "Authorization": "Bearer k-2"},
                           timeout=10)
        assert ok.status_code == 200 and ok.json()["predictions"][0]["label"]
        assert requests.get(f"{keyed.url}/metrics", timeout=10).status_code == 200
        # 50 MB announced, nothing sent: a client without a key is answered at once, not read.
        sock = _connect(keyed)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/tiff\r\n"
                     b"Content-Length: 50000000\r\n\r\n")
        started = time.monotonic()
        sock.settimeout(5)
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 401") and time.monotonic() - started < 2
        sock.close()


def test_metrics_on_their_own_port(tmp_path: Path) -> None:
    from tests.integration.servers import free_port

    export_tiny_model(tmp_path / "repo", "tiny", 1)
    metrics_port = free_port()
    with GunicornServer(tmp_path, model_repository=tmp_path / "repo", model_name="tiny", metrics_port=metrics_port,
                        repository_poll_interval_s=0) as split:
        metrics_url = f"http://127.0.0.1:{metrics_port}"
        assert requests.get(f"{split.url}/metrics", timeout=10).status_code == 404
        assert requests.get(f"{metrics_url}/predict", timeout=10).status_code == 404
        exposition = requests.get(f"{metrics_url}/metrics", timeout=10)
        assert exposition.status_code == 200 and "serving_ready" in exposition.text
        assert requests.get(f"{split.url}/healthz", timeout=10).status_code == 200
