"""Jobs and their items in the database: submit, report, cancel, read results, expire.

Claiming work (the runners' side) is in `service.jobs.claims`; both work on one `Engine`, so
every Gunicorn worker of every replica sees the same jobs.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Row, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from service.errors import IdempotencyKeyReused, JobFinished, JobNotFound
from service.jobs.claims import state_counts
from service.jobs.schema import JobError, JobParams, JobProgress, JobStatus
from service.jobs.tables import CANCELLED, FAILED, FINISHED, QUEUED, RUNNING, SUCCEEDED, items, jobs

_INSERT_CHUNK = 500
_MAX_ERRORS = 100


@dataclass(frozen=True)
class NewItem:
    """One image of a job being submitted."""

    source: str
    sample: dict[str, Any]
    page: int = 0
    uploaded: bytes | None = None


@dataclass(frozen=True)
class JobSubmission:
    """A whole job as submitted; `request_sha256` identifies the request for idempotency."""

    params: JobParams
    items: Sequence[NewItem]
    request_sha256: str
    idempotency_key: str | None = None


class JobStore:
    """Submitting and reading jobs; safe to call from every request thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def submit(self, submission: JobSubmission) -> tuple[str, bool]:
        """Store a job; returns (job id, created). A known Idempotency-Key with the same request
        returns the existing job (created False); with another request it is refused.

        Raises:
            IdempotencyKeyReused: the key came before with a different request (422).
        """
        key = submission.idempotency_key
        if key is not None:
            existing = self._by_key(key, submission.request_sha256)
            if existing is not None:
                return existing, False
        job_id = uuid.uuid4().hex
        params = submission.params
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(jobs).values(
                    id=job_id, idempotency_key=key, request_sha256=submission.request_sha256, state=QUEUED,
                    model=params.model, version=params.version, qc=params.qc, tiling=params.tiling,
                    total=len(submission.items), created_at=time.time(),
                ))
                rows = [{"job_id": job_id, "position": position, "source": item.source,
                         "uploaded": item.uploaded, "page": item.page, "sample": json.dumps(item.sample),
                         "state": QUEUED, "attempts": 0}
                        for position, item in enumerate(submission.items)]
                for start in range(0, len(rows), _INSERT_CHUNK):
                    connection.execute(insert(items), rows[start:start + _INSERT_CHUNK])
        except IntegrityError:
            # The same key submitted concurrently: the other request's job won the unique index.
            existing = self._by_key(key, submission.request_sha256) if key is not None else None
            if existing is None:
                raise
            return existing, False
        return job_id, True

    def _by_key(self, key: str, request_sha256: str) -> str | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(jobs.c.id, jobs.c.request_sha256).where(jobs.c.idempotency_key == key)).first()
        if row is None:
            return None
        if row.request_sha256 != request_sha256:
            raise IdempotencyKeyReused(f"Idempotency-Key {key!r} was used for a different request (job {row.id})")
        return str(row.id)

    def status(self, job_id: str) -> JobStatus:
        """State, progress (done/total, images/s, ETA) and the first errors of a job."""
        with self.engine.connect() as connection:
            job = connection.execute(select(jobs).where(jobs.c.id == job_id)).first()
            if job is None:
                raise JobNotFound(f"no job {job_id!r} (never submitted, or deleted after its retention period)")
            counts = state_counts(connection, job_id)
            errors = connection.execute(
                select(items.c.position, items.c.source, items.c.error_code, items.c.error_message)
                .where(items.c.job_id == job_id, items.c.state == FAILED)
                .order_by(items.c.position).limit(_MAX_ERRORS)).all()
        return _status(job, counts, errors)

    def cancel(self, job_id: str) -> JobStatus:
        """Cancel a queued or running job: its unfinished items are never run (finished ones
        stay readable). Cancelling a cancelled job is a no-op.

        Raises:
            JobFinished: the job already succeeded or failed (409).
        """
        now = time.time()
        with self.engine.begin() as connection:
            state = connection.execute(
                select(jobs.c.state).where(jobs.c.id == job_id).with_for_update()).scalar_one_or_none()
            if state is None:
                raise JobNotFound(f"no job {job_id!r}")
            if state in (SUCCEEDED, FAILED):
                raise JobFinished(f"job {job_id} already {state}")
            if state != CANCELLED:
                connection.execute(update(jobs).where(jobs.c.id == job_id).values(state=CANCELLED, finished_at=now))
                connection.execute(
                    update(items).where(items.c.job_id == job_id, items.c.state.in_((QUEUED, RUNNING)))
                    .values(state=CANCELLED, uploaded=None, lease_owner=None, lease_expires_at=None, finished_at=now))
        return self.status(job_id)

    def results(self, job_id: str) -> list[Row[Any]]:
        """The finished images' rows in submission order: (position, source, p_positive, prediction)."""
        with self.engine.connect() as connection:
            return list(connection.execute(
                select(items.c.position, items.c.source, items.c.p_positive, items.c.prediction)
                .where(items.c.job_id == job_id, items.c.state == SUCCEEDED).order_by(items.c.position)).all())

    def purge(self, retention_s: float) -> int:
        """Delete jobs finished more than `retention_s` ago, with their items; returns how many."""
        cutoff = time.time() - retention_s
        with self.engine.begin() as connection:
            expired = select(jobs.c.id).where(jobs.c.state.in_(FINISHED), jobs.c.finished_at < cutoff)
            connection.execute(delete(items).where(items.c.job_id.in_(expired)))
            return int(connection.execute(delete(jobs).where(jobs.c.id.in_(expired))).rowcount)


def _status(job: Row[Any], counts: dict[str, int], errors: Sequence[Row[Any]]) -> JobStatus:
    done = counts.get(SUCCEEDED, 0) + counts.get(FAILED, 0)
    rate = eta = None
    if job.started_at is not None and done:
        elapsed_s = (job.finished_at or time.time()) - job.started_at
        if elapsed_s > 0:
            rate = done / elapsed_s
            eta = 0.0 if job.state in FINISHED else (job.total - done) / rate
    return JobStatus(
        id=job.id, state=job.state, model=job.model, version=job.version, qc=job.qc, tiling=job.tiling,
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        progress=JobProgress(done=done, total=job.total, failed=counts.get(FAILED, 0), images_per_s=rate, eta_s=eta),
        errors=[JobError(position=e.position, source=e.source, code=e.error_code or "error",
                         message=e.error_message or "") for e in errors],
        links={"self": f"/jobs/{job.id}", "results": f"/jobs/{job.id}/results"},
    )
