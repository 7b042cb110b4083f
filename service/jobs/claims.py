"""Work items claimed by the runners of every worker and replica, as leases.

A claim marks items `running` under the worker's name until `lease_expires_at`; the worker
writes each result only while it still holds the item. A worker killed mid-job (SIGKILL, OOM,
a lost node) simply stops renewing: once its leases expire, any worker claims those items again
and the job resumes where it stopped, its finished results kept. PostgreSQL picks items with
`SELECT ... FOR UPDATE SKIP LOCKED` (concurrent claimers skip each other's rows instead of
waiting or taking the same ones); SQLite runs the claim as one `BEGIN IMMEDIATE` transaction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, or_, select, update

from service.jobs.schema import JobParams
from service.jobs.tables import FAILED, QUEUED, RUNNING, SUCCEEDED, items, jobs


@dataclass(frozen=True)
class Claim:
    """One item a worker now holds, with its job's parameters."""

    item_id: int
    job_id: str
    position: int
    source: str
    uploaded: bytes | None
    page: int
    sample: dict[str, Any]
    params: JobParams
    attempts: int
    """Claims of this item so far, this one included."""


class ClaimStore:
    """The runners' side of the job tables."""

    def __init__(self, engine: Engine, owner: str, lease_s: float) -> None:
        self.engine = engine
        self.owner = owner
        self.lease_s = lease_s

    def claim(self, limit: int) -> list[Claim]:
        """Take up to `limit` queued (or abandoned: lease expired) items, oldest job first."""
        now = time.time()
        claimable = or_(items.c.state == QUEUED, and_(items.c.state == RUNNING, items.c.lease_expires_at < now))
        chosen = (select(items.c.id).where(claimable).order_by(items.c.id).limit(limit)
                  .with_for_update(skip_locked=True))
        with self.engine.begin() as connection:
            taken = connection.execute(
                update(items).where(items.c.id.in_(chosen))
                .values(state=RUNNING, lease_owner=self.owner, lease_expires_at=now + self.lease_s,
                        attempts=items.c.attempts + 1)
                .returning(items.c.id, items.c.job_id, items.c.position, items.c.source, items.c.uploaded,
                           items.c.page, items.c.sample, items.c.attempts)).all()
            if not taken:
                return []
            job_ids = sorted({row.job_id for row in taken})
            connection.execute(update(jobs).where(jobs.c.id.in_(job_ids), jobs.c.state == QUEUED)
                               .values(state=RUNNING, started_at=now))
            params = {row.id: JobParams(model=row.model, version=row.version, qc=row.qc, tiling=row.tiling)
                      for row in connection.execute(select(jobs).where(jobs.c.id.in_(job_ids)))}
        return [Claim(row.id, row.job_id, row.position, row.source, row.uploaded, row.page,
                      json.loads(row.sample), params[row.job_id], row.attempts)
                for row in sorted(taken, key=lambda row: row.id)]

    def succeed(self, claim: Claim, prediction: dict[str, Any], p_positive: float) -> bool:
        """Store an item's answer; False if the lease was lost (cancelled, or expired and
        claimed by another worker): then this answer is dropped, never written twice."""
        return self._finish(claim, state=SUCCEEDED, prediction=json.dumps(prediction), p_positive=p_positive)

    def fail(self, claim: Claim, code: str, message: str) -> bool:
        """Record why an item cannot be classified (undecodable, missing file...)."""
        return self._finish(claim, state=FAILED, error_code=code, error_message=message[:2000])

    def release(self, item_ids: Sequence[int] | None = None) -> int:
        """Give items back unprocessed (shutdown, model not ready, queue full): queued again."""
        condition = self._held() if item_ids is None else and_(self._held(), items.c.id.in_(item_ids))
        with self.engine.begin() as connection:
            return int(connection.execute(update(items).where(condition)
                                          .values(state=QUEUED, lease_owner=None, lease_expires_at=None)).rowcount)

    def _held(self) -> Any:
        return and_(items.c.lease_owner == self.owner, items.c.state == RUNNING)

    def _finish(self, claim: Claim, **values: Any) -> bool:
        now = time.time()
        with self.engine.begin() as connection:
            # The job's row is locked first: concurrent finishers of one job's last items are
            # serialised, so exactly one of them sees none left and finishes the job.
            connection.execute(select(jobs.c.id).where(jobs.c.id == claim.job_id).with_for_update())
            written = connection.execute(
                update(items).where(items.c.id == claim.item_id, self._held())
                # lease_owner stays: which worker answered the item.
                .values(uploaded=None, lease_expires_at=None, finished_at=now, **values)).rowcount
            if written:
                _finish_job_if_done(connection, claim.job_id, now)
        return bool(written)


def state_counts(connection: Connection, job_id: str) -> dict[str, int]:
    """How many of a job's items are in each state."""
    rows = connection.execute(
        select(items.c.state, func.count()).where(items.c.job_id == job_id).group_by(items.c.state)).all()
    return {str(state): int(count) for state, count in rows}


def _finish_job_if_done(connection: Connection, job_id: str, now: float) -> None:
    counts = state_counts(connection, job_id)
    if counts.get(QUEUED, 0) or counts.get(RUNNING, 0):
        return
    state = FAILED if counts.get(FAILED, 0) and not counts.get(SUCCEEDED, 0) else SUCCEEDED
    connection.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.state == RUNNING)
                       .values(state=state, finished_at=now))
