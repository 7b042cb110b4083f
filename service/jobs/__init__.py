"""Whole-plate jobs: submitted over /jobs, stored in SQLite or PostgreSQL, run in the background
by every worker through the same pipeline and batcher as /predict (see README, Jobs)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask
from sqlalchemy.exc import DBAPIError

from service.config import Settings
from service.jobs.claims import ClaimStore
from service.jobs.database import create_tables, database_url, make_engine
from service.jobs.runner import JobRunner, worker_name
from service.jobs.store import JobStore

JOBS_EXTENSION = "serving.jobs"

_log = logging.getLogger(__name__)


@dataclass
class Jobs:
    """One worker's handle on the job tables and its runner."""

    store: JobStore
    runner: JobRunner

    def close(self, timeout_s: float | None = None) -> None:
        """Stop the runner (giving back its unfinished items) and the connection pool."""
        self.runner.stop(timeout_s)
        self.store.engine.dispose()


def install_jobs(app: Flask, settings: Settings) -> Jobs | None:
    """Connect to the job database and start this worker's runner; None when not configured.

    A database that is down does not stop the worker: /predict serves, /jobs answers 503
    `jobs_database_unavailable`, and the runner makes the tables once it can reach it.
    """
    url = database_url(settings)
    if url is None:
        return None
    engine = make_engine(url)
    try:
        create_tables(engine)
    except DBAPIError as err:
        _log.warning("job database unreachable; will retry: %s", err.__class__.__name__)
    store = JobStore(engine)
    runner = JobRunner(app, store, ClaimStore(engine, worker_name(), settings.jobs_lease_s), settings)
    jobs = Jobs(store, runner)
    app.extensions[JOBS_EXTENSION] = jobs
    runner.start()
    return jobs
