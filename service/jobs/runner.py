"""The background runner in every worker: claims job items, classifies them, stores the rows.

Each Gunicorn worker runs one runner thread. Whenever the default model's batcher has no
interactive image queued, announced or running, it claims a few items (at most
`jobs_max_queued_images`), reads their bytes (an upload from the database, or a file under the
input root), and runs them through the same `Pipeline` as /predict, queued in the batcher's
background lane: interactive requests are always batched first and never share a batch with
them. A row is stored exactly as /predict would answer it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from itertools import groupby

from flask import Flask
from sqlalchemy.exc import DBAPIError

from service.api.common import get_pipeline
from service.api.predict import predictions, provenance
from service.api.uploads import Upload
from service.config import Settings
from service.errors import ServiceError
from service.jobs.claims import Claim, ClaimStore
from service.jobs.database import create_tables
from service.jobs.inputs import read_under
from service.jobs.store import JobStore
from service.pipeline import EncodedImage, ModelRoute
from service.schemas import SampleInfo

_log = logging.getLogger(__name__)

#: Claims of one item after which it is failed instead of retried (an image that kills its worker).
MAX_ATTEMPTS = 5


def worker_name() -> str:
    """Unique per process and start: a restarted worker never mistakes its predecessor's leases."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobRunner:
    """One worker's background loop over the shared job tables."""

    def __init__(self, app: Flask, store: JobStore, claims: ClaimStore, settings: Settings) -> None:
        self._app = app
        self.store = store
        self.claims = claims
        self.settings = settings
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._purge_every_s = min(60.0, settings.jobs_retention_s / 2)
        self._next_purge = 0.0
        self._tables_ready = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="jobs-runner", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Finish the items in hand, then give back any still held (another worker takes them)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        try:
            self.claims.release()
        except DBAPIError as err:  # the leases expire anyway
            _log.warning("could not give back job items on stop: %s", err.__class__.__name__)

    def _loop(self) -> None:
        failures = 0
        with self._app.app_context():  # the row rendering shared with /predict reads the app's settings
            while not self._stopping.is_set():
                try:
                    worked = self._step()
                    failures = 0
                except DBAPIError as err:  # the database is down or restarting: back off, quietly
                    if failures == 0:
                        _log.warning("job database unreachable: %s", err.__class__.__name__)
                    failures += 1
                    worked = False
                except Exception:  # noqa: BLE001 - a bug must not end the runner
                    _log.exception("job runner step failed")
                    worked = False
                if not worked:
                    self._stopping.wait(min(30.0, self.settings.jobs_poll_interval_s * 2 ** min(failures, 5)))

    def _step(self) -> bool:
        if not self._tables_ready:  # the database may have been down when the worker started
            create_tables(self.store.engine)
            self._tables_ready = True
        now = time.monotonic()
        if now >= self._next_purge:
            self._next_purge = now + self._purge_every_s
            purged = self.store.purge(self.settings.jobs_retention_s)
            if purged:
                _log.info("deleted %d jobs past their retention period", purged)
        manager = get_pipeline().manager
        try:
            batcher = manager.get().batcher  # the default model's: jobs yield to its traffic
        except ServiceError:  # not loaded yet, or reloading
            return False
        if batcher is not None and not batcher.wait_idle(self.settings.jobs_poll_interval_s):
            return True  # interactive requests are being served: claim nothing meanwhile
        batch = self.claims.claim(self.settings.jobs_max_queued_images)
        for _, group in groupby(batch, key=lambda claim: claim.job_id):
            self._run(list(group))
        return bool(batch)

    def _run(self, group: list[Claim]) -> None:
        """Classify one job's claimed items together; a bad image fails alone."""
        images: list[EncodedImage] = []
        ready: list[Claim] = []
        for claim in group:
            if claim.attempts > MAX_ATTEMPTS:
                self.claims.fail(claim, "too_many_attempts", f"claimed {claim.attempts} times without an answer")
                continue
            try:
                data = claim.uploaded if claim.uploaded is not None else read_under(
                    self.settings.jobs_input_root, claim.source, self.settings.max_body_bytes)
            except ServiceError as err:
                self.claims.fail(claim, err.code, err.message)
                continue
            images.append(EncodedImage(data, claim.page))
            ready.append(claim)
        if not ready:
            return
        params = ready[0].params
        deadline = time.monotonic() + min(self.settings.request_timeout_s, self.settings.jobs_lease_s / 2)
        try:
            result = get_pipeline().run(images, ModelRoute(params.model, params.version), deadline,
                                        params.qc, params.tiling, background=True)
        except ServiceError as err:
            if err.status_code >= 500:  # the worker's trouble, not the image's: another try later
                self.claims.release([claim.item_id for claim in ready])
                self._stopping.wait(err.retry_after_s or self.settings.jobs_poll_interval_s)
            elif len(ready) > 1:
                for claim in ready:  # find which image it was: each alone
                    self._run([claim])
            else:
                self.claims.fail(ready[0], err.code, err.message)
            return
        uploads = [Upload(image, SampleInfo.model_validate(claim.sample)) for image, claim in zip(images, ready)]
        origin = provenance(result).model_dump(exclude_none=True)  # as /predict answers it
        column = result.positive_column
        for claim, prediction, label, row in zip(ready, predictions(result, uploads), result.labels,
                                                 result.probabilities):
            body = prediction.model_dump(exclude_none=True)
            body.setdefault("label", label)  # null (refused by the gate) stays, as in /predict
            body.update(source=claim.source, provenance=origin)
            self.claims.succeed(claim, body, float(row[column]))
