"""The job store and its claims against SQLite and a real PostgreSQL server (tests/postgres.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, make_url, select

from service import create_app
from service.config import Settings
from service.errors import IdempotencyKeyReused, JobFinished, JobNotFound
from service.jobs.claims import ClaimStore
from service.jobs.database import create_tables, database_url, make_engine
from service.jobs.schema import JobParams
from service.jobs.store import JobStore, JobSubmission, NewItem
from service.jobs.tables import items
from tests.conftest import tiff_bytes
from tests.fakes import FakeBackend
from tests.integration.servers import free_port
from tests.postgres import PostgresServer


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.new_database()
    engine = make_engine(url)
    create_tables(engine)
    create_tables(engine)  # idempotent: every worker runs it at start
    yield engine
    engine.dispose()


def _submission(count: int, key: str | None = None, digest: str = "a" * 64) -> JobSubmission:
    new = [NewItem(source=f"plate1/B{index:02d}.tif", sample={"well": f"B{index + 1:02d}"}, uploaded=b"x" * index)
           for index in range(count)]
    return JobSubmission(JobParams(), new, digest, key)


def _attempts(engine: Engine, job_id: str) -> list[int]:
    with engine.connect() as connection:
        return list(connection.execute(
            select(items.c.attempts).where(items.c.job_id == job_id).order_by(items.c.position)).scalars())


def test_submit_and_status(engine: Engine) -> None:
    store = JobStore(engine)
    job_id, created = store.submit(_submission(3))
    assert created
    status = store.status(job_id)
    assert (status.state, status.progress.done, status.progress.total) == ("queued", 0, 3)
    assert status.progress.eta_s is None
    with pytest.raises(JobNotFound):
        store.status("0" * 32)


def test_idempotency_key_returns_the_same_job_or_refuses_another_request(engine: Engine) -> None:
    store = JobStore(engine)
    first, created = store.submit(_submission(2, key="plate-1"))
    again, created_again = store.submit(_submission(2, key="plate-1"))
    assert created and not created_again and again == first
    with pytest.raises(IdempotencyKeyReused):
        store.submit(_submission(2, key="plate-1", digest="b" * 64))
    other, _ = store.submit(_submission(2, key="plate-2"))
    assert other != first


def test_claims_take_items_in_order_and_finish_the_job(engine: Engine) -> None:
    store = JobStore(engine)
    job_id, _ = store.submit(_submission(3))
    worker = ClaimStore(engine, "w1", lease_s=60)
    claimed = worker.claim(2)
    assert [c.position for c in claimed] == [0, 1]
    assert claimed[1].uploaded == b"x" and claimed[0].sample == {"well": "B01"}
    assert store.status(job_id).state == "running"
    rest = worker.claim(5)
    assert [c.position for c in rest] == [2]
    assert worker.claim(5) == []
    assert worker.succeed(claimed[0], {"label": "infected"}, 0.9)
    assert worker.fail(claimed[1], "undecodable_image", "not an image")
    assert store.status(job_id).state == "running"
    assert worker.succeed(rest[0], {"label": "uninfected"}, 0.1)
    status = store.status(job_id)
    assert (status.state, status.progress.done, status.progress.failed) == ("succeeded", 3, 1)
    assert status.errors[0].position == 1 and status.errors[0].code == "undecodable_image"
    assert [row.position for row in store.results(job_id)] == [0, 2]
    with engine.connect() as connection:  # uploads are dropped once their item is done
        assert connection.execute(select(items.c.uploaded).where(items.c.job_id == job_id)).scalars().all() == \
            [None, None, None]


def test_a_job_whose_every_image_failed_is_failed(engine: Engine) -> None:
    store = JobStore(engine)
    job_id, _ = store.submit(_submission(1))
    worker = ClaimStore(engine, "w1", lease_s=60)
    [claim] = worker.claim(1)
    worker.fail(claim, "input_not_found", "gone")
    assert store.status(job_id).state == "failed"


def test_an_expired_lease_is_claimed_again_and_the_old_holder_cannot_write(engine: Engine) -> None:
    store = JobStore(engine)
    job_id, _ = store.submit(_submission(2))
    dead = ClaimStore(engine, "dead", lease_s=0.05)
    first = dead.claim(1)
    assert dead.succeed(first[0], {"label": "infected"}, 0.9)  # finished before it "died"
    stale = dead.claim(1)
    time.sleep(0.1)  # the lease runs out (its worker was SIGKILLed)
    alive = ClaimStore(engine, "alive", lease_s=60)
    [resumed] = alive.claim(5)
    assert resumed.position == 1 and resumed.attempts == 2
    assert not dead.succeed(stale[0], {"label": "late"}, 0.5)
    assert alive.succeed(resumed, {"label": "uninfected"}, 0.1)
    assert store.status(job_id).state == "succeeded"
    assert _attempts(engine, job_id) == [1, 2]


def test_cancel_keeps_finished_rows_and_drops_answers_in_flight(engine: Engine) -> None:
    store = JobStore(engine)
    job_id, _ = store.submit(_submission(3))
    worker = ClaimStore(engine, "w1", lease_s=60)
    done, running = worker.claim(2)
    worker.succeed(done, {"label": "infected"}, 0.9)
    assert store.cancel(job_id).state == "cancelled"
    assert not worker.succeed(running, {"label": "infected"}, 0.9)
    assert worker.claim(5) == []
    assert [row.position for row in store.results(job_id)] == [0]
    assert store.cancel(job_id).state == "cancelled"
    finished, _ = store.submit(_submission(1))
    worker.succeed(worker.claim(1)[0], {"label": "infected"}, 0.9)
    with pytest.raises(JobFinished):
        store.cancel(finished)


def test_release_gives_items_back(engine: Engine) -> None:
    JobStore(engine).submit(_submission(2))
    worker = ClaimStore(engine, "w1", lease_s=60)
    worker.claim(2)
    assert worker.release() == 2
    assert [c.position for c in ClaimStore(engine, "w2", lease_s=60).claim(5)] == [0, 1]


def test_purge_deletes_finished_jobs_past_retention_only(engine: Engine) -> None:
    store = JobStore(engine)
    finished, _ = store.submit(_submission(1))
    ClaimStore(engine, "w1", lease_s=60).succeed(ClaimStore(engine, "w1", lease_s=60).claim(1)[0], {}, 0.5)
    waiting, _ = store.submit(_submission(1))
    assert store.purge(retention_s=3600) == 0
    time.sleep(0.05)
    assert store.purge(retention_s=0.01) == 1
    with pytest.raises(JobNotFound):
        store.status(finished)
    assert store.status(waiting).state == "queued"
    with engine.connect() as connection:
        assert connection.execute(select(items.c.job_id)).scalars().all() == [waiting]


def test_concurrent_claimers_never_take_the_same_item(engine: Engine) -> None:
    store = JobStore(engine)
    job_id, _ = store.submit(_submission(60))
    taken: list[int] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        claims = ClaimStore(engine, name, lease_s=60)
        while batch := claims.claim(3):
            with lock:
                taken.extend(c.item_id for c in batch)
            for claim in batch:
                assert claims.succeed(claim, {}, 0.5)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(taken) == len(set(taken)) == 60
    assert _attempts(engine, job_id) == [1] * 60
    assert store.status(job_id).state == "succeeded"


def test_database_url_from_settings(tmp_path: Path) -> None:
    assert database_url(Settings()) is None
    assert database_url(Settings(data_dir=tmp_path / "state")) == f"sqlite:///{tmp_path / 'state' / 'jobs.sqlite'}"
    assert (tmp_path / "state").is_dir()
    secret = tmp_path / "password"
    secret.write_text("s3cr:t/@\n")
    url = database_url(Settings(jobs_database_url="postgresql://cpe@db:5432/jobs", jobs_database_password_file=secret))
    assert url is not None and make_url(url).password == "s3cr:t/@"
    assert make_url(url).drivername == "postgresql+psycopg" and make_url(url).host == "db"
    assert "s3cr" not in repr(Settings(jobs_database_url=url))


def test_jobs_answer_503_without_a_database(client: FlaskClient) -> None:
    response = client.get("/jobs/" + "0" * 32)
    assert response.status_code == 503 and response.json["error"]["code"] == "jobs_disabled"


def test_an_unreachable_database_is_a_503_and_predict_still_serves(rng: np.random.Generator) -> None:
    # A real PostgreSQL client against a loopback port where nothing listens (connection refused).
    settings = Settings(model_name="fake", warmup=False, jobs_database_url=f"postgresql://cpe@127.0.0.1:{free_port()}/x")
    app = create_app(settings, FakeBackend())
    try:
        assert app.extensions["serving"].wait_ready(10)
        client = app.test_client()
        response = client.get("/jobs/" + "0" * 32)
        assert response.status_code == 503, response.json
        assert response.json["error"]["code"] == "jobs_database_unavailable" and response.headers["Retry-After"] == "5"
        image = tiff_bytes(rng.integers(0, 4000, (40, 50)).astype(np.uint16))
        assert client.post("/predict", data=image, content_type="image/tiff").status_code == 200
    finally:
        app.extensions["serving.jobs"].close(5)
        app.extensions["serving"].close(5)
