"""Whole-plate jobs under real Gunicorn: results equal /predict's, idempotency, input-root
confinement, cancel, two instances sharing one PostgreSQL job table, SIGKILL and resumption,
retention. The job tables are read directly (SQLAlchemy) to count how often each image ran."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from sqlalchemy import create_engine, select

from service.jobs.tables import items
from tests.client.conftest import CLIENT_SOURCE
from tests.conftest import MODEL_REPOSITORY, tiff_bytes
from tests.integration.servers import GunicornServer
from tests.models import export_tiny_model
from tests.postgres import PostgresServer

FINISHED = ("succeeded", "failed", "cancelled")


def _images(count: int, seed: int = 0, shape: tuple[int, int] = (96, 128)) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [tiff_bytes(rng.integers(200, 3800, shape).astype(np.uint16)) for _ in range(count)]


def _wait(server: GunicornServer, job_id: str, states: tuple[str, ...] = FINISHED,
          timeout_s: float = 120, done_at_least: int | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = requests.get(f"{server.url}/jobs/{job_id}", timeout=10).json()
        if status["state"] in states or (done_at_least is not None and status["progress"]["done"] >= done_at_least):
            return status
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} still {status['state']} ({status['progress']}):\n{server.log()[-3000:]}")


def _upload(server: GunicornServer, images: list[bytes], metadata: list[dict[str, Any]] | None = None,
            key: str | None = None, route: str = "/jobs", accept: str = "application/json",
            first: int = 0) -> requests.Response:
    files = [("image", (f"s{first + index}.tif", data, "image/tiff")) for index, data in enumerate(images)]
    form = {"metadata": json.dumps(metadata)} if metadata is not None else {}
    headers = {"Accept": accept, **({"Idempotency-Key": key} if key else {})}
    return requests.post(f"{server.url}{route}", files=files, data=form, headers=headers, timeout=60)


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# --- one instance, the committed model, SQLite under SERVING_DATA_DIR --------------------------


@pytest.fixture(scope="module")
def plate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The input root: two wells of three sites, a file that is no image, and a symlink out."""
    root = tmp_path_factory.mktemp("input-root")
    for index, data in enumerate(_images(6, seed=1)):
        (root / "plate1").mkdir(exist_ok=True)
        (root / "plate1" / f"s{index}.tif").write_bytes(data)
    (root / "plate1" / "broken.tif").write_bytes(b"not an image")
    outside = tmp_path_factory.mktemp("outside") / "secret.tif"
    outside.write_bytes(_images(1)[0])
    (root / "plate1" / "escape.tif").symlink_to(outside)
    (root / "plate1" / "inside.tif").symlink_to(root / "plate1" / "s0.tif")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, plate: Path) -> Iterator[GunicornServer]:
    root = tmp_path_factory.mktemp("jobs-gunicorn")
    with GunicornServer(root, model_repository=MODEL_REPOSITORY, warmup=False, repository_poll_interval_s=0,
                        max_batch_size=4, threads=8, data_dir=root / "data", jobs_input_root=plate,
                        jobs_poll_interval_s=0.1) as running:
        yield running


def _manifest_items() -> list[dict[str, Any]]:
    return [{"path": f"plate1/s{index}.tif", "id": f"s{index}.tif", "plate": "P1", "well": ("b2", "B3")[index // 3],
             "site": index % 3} for index in range(6)]


def test_a_job_answers_exactly_what_predict_answers(server: GunicornServer, plate: Path) -> None:
    images = [(plate / "plate1" / f"s{index}.tif").read_bytes() for index in range(6)]
    metadata = [{key: value for key, value in item.items() if key not in ("path", "id")} for item in _manifest_items()]
    # One image per /predict call, as the job runner sends them (SERVING_JOBS_MAX_QUEUED_IMAGES=1):
    # TensorFlow's CPU kernels may differ in the last bit of float32 with the batch's size.
    expected: dict[str, Any] = {"predictions": []}
    expected_csv: list[dict[str, str]] = []
    for index, image in enumerate(images):
        one = _upload(server, [image], [metadata[index]], route="/predict", first=index)
        assert one.status_code == 200, one.text
        expected["provenance"] = one.json()["provenance"]
        expected["predictions"] += one.json()["predictions"]
        expected_csv += _csv(_upload(server, [image], [metadata[index]], route="/predict", accept="text/csv",
                                     first=index).text)
    uploaded = _upload(server, images, metadata)
    assert uploaded.status_code == 202, uploaded.text
    manifest = requests.post(f"{server.url}/jobs", json={"items": _manifest_items()}, timeout=30)
    assert manifest.status_code == 202, manifest.text
    for job in (uploaded.json(), manifest.json()):
        status = _wait(server, job["id"])
        assert status["state"] == "succeeded" and status["progress"]["done"] == 6, status
        results = requests.get(f"{server.url}/jobs/{job['id']}/results", timeout=30).json()
        rows = results["results"]
        assert [row.pop("provenance") for row in rows] == [expected["provenance"]] * 6
        assert [row.pop("source") for row in rows] in (
            [f"s{i}.tif" for i in range(6)], [f"plate1/s{i}.tif" for i in range(6)])
        assert rows == expected["predictions"]
        assert [(w["Metadata_Well"], w["sites"]) for w in results["wells"]] == [("B02", 3), ("B03", 3)]
        job_csv = _csv(requests.get(f"{server.url}/jobs/{job['id']}/results", headers={"Accept": "text/csv"},
                                    timeout=30).text)
        assert [row.pop("request_id") for row in job_csv] == [job["id"]] * 6
        assert job_csv == [{k: v for k, v in row.items() if k != "request_id"} for row in expected_csv]
        wells = _csv(requests.get(f"{server.url}/jobs/{job['id']}/results?format=csv&table=wells", timeout=30).text)
        assert [w["Metadata_Well"] for w in wells] == ["B02", "B03"]


def test_bad_images_fail_alone(server: GunicornServer) -> None:
    body = {"items": [{"path": "plate1/s0.tif"}, {"path": "plate1/broken.tif", "well": "C1"},
                      {"path": "plate1/inside.tif"}]}
    job = requests.post(f"{server.url}/jobs", json=body, timeout=30).json()
    status = _wait(server, job["id"])
    assert status["state"] == "succeeded"
    assert status["progress"] == {**status["progress"], "done": 3, "failed": 1}
    assert [(e["position"], e["code"]) for e in status["errors"]] == [(1, "undecodable_image")]
    rows = requests.get(f"{server.url}/jobs/{job['id']}/results", timeout=30).json()["results"]
    assert [row["source"] for row in rows] == ["plate1/s0.tif", "plate1/inside.tif"]


def test_idempotency_key(server: GunicornServer) -> None:
    images = _images(2, seed=5)
    first = _upload(server, images, key="plate-42")
    again = _upload(server, images, key="plate-42")
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["Location"] == f"/jobs/{first.json()['id']}"
    other = _upload(server, _images(2, seed=6), key="plate-42")
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"


@pytest.mark.parametrize(("path", "status", "code"), [
    ("../outside/secret.tif", 400, "invalid_path"),
    ("plate1/../../etc/passwd", 400, "invalid_path"),
    ("/etc/passwd", 400, "invalid_path"),
    ("plate1/escape.tif", 403, "path_outside_input_root"),
    ("plate1/missing.tif", 400, "input_not_found"),
    ("plate1", 400, "input_not_found"),
])
def test_paths_outside_the_input_root_are_refused(server: GunicornServer, path: str, status: int, code: str) -> None:
    body = {"items": [{"path": "plate1/s0.tif"}, {"path": path}]}
    response = requests.post(f"{server.url}/jobs", json=body, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_cancel_stops_a_running_job_and_keeps_its_finished_rows(server: GunicornServer) -> None:
    job = _upload(server, _images(40, seed=7)).json()
    cancelled = requests.delete(f"{server.url}/jobs/{job['id']}", timeout=30)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    time.sleep(1.0)  # anything still in flight at the cancel must not be stored after it
    status = requests.get(f"{server.url}/jobs/{job['id']}", timeout=30).json()
    rows = requests.get(f"{server.url}/jobs/{job['id']}/results", timeout=30).json()["results"]
    assert status["state"] == "cancelled"
    assert len(rows) == status["progress"]["done"] <= cancelled.json()["progress"]["done"] < 40
    finished = _upload(server, _images(1, seed=8)).json()
    _wait(server, finished["id"])
    refused = requests.delete(f"{server.url}/jobs/{finished['id']}", timeout=30)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "job_finished"
    assert requests.get(f"{server.url}/jobs/{'0' * 32}", timeout=30).status_code == 404


# --- several instances on one PostgreSQL job table (tiny model: the database is under test) ----


@pytest.fixture(scope="module")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("tiny-repo")
    export_tiny_model(repository, "tiny", 1)
    return repository


def _tiny_server(root: Path, repository: Path, **settings: object) -> GunicornServer:
    return GunicornServer(root, model_repository=repository, model_name="tiny", warmup=False,
                          repository_poll_interval_s=0, max_batch_size=4, threads=4, jobs_poll_interval_s=0.05,
                          **settings)


def _item_rows(url: str, job_id: str) -> list[Any]:
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(select(items.c.state, items.c.attempts, items.c.lease_owner)
                                  .where(items.c.job_id == job_id).order_by(items.c.position)).all()
    engine.dispose()
    return list(rows)


def test_two_instances_share_one_postgresql_job_table(tmp_path: Path, tiny_repository: Path,
                                                      postgres: PostgresServer) -> None:
    url = postgres.new_database()
    # One image claimed at a time (the default): both instances take part in a 120-image job.
    servers = [_tiny_server(tmp_path, tiny_repository, jobs_database_url=url) for _ in range(2)]
    try:
        for server in servers:  # both load their model at once
            server.start(wait_ready=False)
        for server in servers:
            server.wait_ready()
        job = _upload(servers[0], _images(120, seed=9, shape=(32, 40))).json()
        status = _wait(servers[1], job["id"])  # the other instance reads the same job
    finally:
        for server in servers:
            if server.process is not None:
                server.terminate()
    assert status["state"] == "succeeded" and status["progress"]["done"] == 120
    rows = _item_rows(url, job["id"])
    assert {row.state for row in rows} == {"succeeded"}
    assert [row.attempts for row in rows] == [1] * 120  # no image processed twice
    owners = {row.lease_owner.rsplit(":", 2)[1] for row in rows}  # host:pid:nonce -> pid
    assert len(owners) == 2, owners


def test_a_job_resumes_after_its_worker_is_killed(tmp_path: Path, tiny_repository: Path,
                                                  postgres: PostgresServer) -> None:
    url = postgres.new_database()
    with _tiny_server(tmp_path, tiny_repository, jobs_database_url=url, jobs_lease_s=2) as server:
        job = _upload(server, _images(300, seed=10, shape=(32, 40))).json()
        _wait(server, job["id"], done_at_least=20)
        [worker] = server.worker_pids()
        os.kill(worker, signal.SIGKILL)  # no drain, no release: its lease must expire
        done_at_kill = {i for i, row in enumerate(_item_rows(url, job["id"])) if row.state == "succeeded"}
        status = _wait(server, job["id"], timeout_s=180)  # the arbiter starts a new worker
        assert server.worker_pids() != [worker]
    assert status["state"] == "succeeded" and status["progress"]["done"] == 300, status
    assert done_at_kill and len(done_at_kill) < 300
    rows = _item_rows(url, job["id"])
    assert {row.state for row in rows} == {"succeeded"}
    assert all(rows[i].attempts == 1 for i in done_at_kill)  # finished results were kept, not redone
    assert len({row.lease_owner for row in rows}) >= 2  # the killed worker and its successor
    assert max(row.attempts for row in rows) <= 2


def test_finished_jobs_are_deleted_after_the_retention_period(tmp_path: Path, tiny_repository: Path) -> None:
    with _tiny_server(tmp_path, tiny_repository, data_dir=tmp_path / "data", jobs_retention_s=1) as server:
        job = _upload(server, _images(2, seed=11, shape=(32, 40))).json()
        assert _wait(server, job["id"])["state"] == "succeeded"
        deadline = time.monotonic() + 30
        while requests.get(f"{server.url}/jobs/{job['id']}", timeout=10).status_code == 200:
            assert time.monotonic() < deadline, "still there 30 s after a 1 s retention period"
            time.sleep(0.2)
        gone = requests.get(f"{server.url}/jobs/{job['id']}", timeout=10)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "job_not_found"


_CLIENT_SCRIPT = """
import json, sys
from cpe_client.client import Client, Upload
url, image = sys.argv[1], open(sys.argv[2], "rb").read()
with Client(url) as client:
    items = [{"path": "plate1/s0.tif", "plate": "P1", "well": "b2", "site": 0}]
    job = client.submit_job(items=items, idempotency_key="client-manifest")
    again = client.submit_job(items=items, idempotency_key="client-manifest")
    uploaded = client.submit_job(uploads=[Upload("s0.tif", image, {"plate": "P1", "well": "B2", "site": 0})])
    done = [client.wait_job(j["id"], poll_s=0.1, timeout_s=120) for j in (job, uploaded)]
    results = [client.job_results(j["id"]) for j in (job, uploaded)]
print(json.dumps({"same": job["id"] == again["id"], "states": [d["state"] for d in done],
                  "p": [r["results"][0]["probabilities"] for r in results],
                  "wells": [r["wells"][0]["Metadata_Well"] for r in results]}))
"""


def test_the_lab_client_submits_follows_and_reads_a_job(server: GunicornServer, plate: Path) -> None:
    # The client from this checkout (not a copy installed in the venv), as the lab runs it.
    done = subprocess.run([sys.executable, "-c", _CLIENT_SCRIPT, server.url, str(plate / "plate1" / "s0.tif")],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": str(CLIENT_SOURCE)})
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout)
    assert answer["same"] and answer["states"] == ["succeeded", "succeeded"]
    assert answer["p"][0] == answer["p"][1] and answer["wells"] == ["B02", "B02"]
