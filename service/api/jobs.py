"""/jobs: submit a whole plate (uploads or a manifest of mounted files), follow it, read its
results (JSON or CSV, per image and per well), cancel it. The work runs in `service.jobs`."""

from __future__ import annotations

import json
import re
from typing import Any

from cpe_client.summary import PLATE_COLUMNS, WELL_COLUMNS, summarize_plates, summarize_wells
from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy.exc import DBAPIError

from service.api.common import get_pipeline, read_json_body
from service.api.errors import error_response
from service.api.openapi import MULTIPART_IMAGES, document
from service.api.predict import CSV_COLUMNS, csv_row, csv_text
from service.api.uploads import multipart_metadata
from service.errors import (
    InvalidInput,
    JobNotFound,
    JobsDatabaseUnavailable,
    JobsDisabled,
    NoImage,
    TooManyImages,
    UnsupportedMediaType,
)
from service.jobs import JOBS_EXTENSION, Jobs
from service.jobs.inputs import request_sha256, resolve_under
from service.jobs.schema import JobManifest, JobParams, JobResults, JobStatus
from service.jobs.store import JobSubmission, NewItem
from service.schemas import ErrorResponse, Prediction, Provenance, SampleInfo

bp = Blueprint("jobs", __name__)

_SAMPLE_FIELDS = set(SampleInfo.model_fields)
_JOB_ID = re.compile(r"[0-9a-f]{32}")
_MAX_KEY_LENGTH = 256
_ERRORS = (400, 403, 404, 409, 413, 415, 422, 503)


@bp.errorhandler(DBAPIError)
def _database_unavailable(err: DBAPIError) -> Response:
    """The database is down or restarting: 503 with Retry-After, never a 500 (the server log
    keeps the driver's message)."""
    current_app.logger.warning("job database error: %s", err.__class__.__name__)
    error = JobsDatabaseUnavailable("the job database cannot be reached; retry shortly")
    return error_response(error.status_code, error.code, error.message, retry_after_s=error.retry_after_s)


def _jobs(job_id: str | None = None) -> Jobs:
    jobs: Jobs | None = current_app.extensions.get(JOBS_EXTENSION)
    if jobs is None:
        raise JobsDisabled("jobs need a database: set SERVING_DATA_DIR (SQLite) or SERVING_JOBS_DATABASE_URL")
    if job_id is not None and not _JOB_ID.fullmatch(job_id):  # never sent to the database as it is
        raise JobNotFound(f"no job {job_id[:64]!r}")
    return jobs


def _status_response(status: JobStatus, code: int = 200) -> Response:
    response = jsonify(status.model_dump())
    response.status_code = code
    return response


@bp.post("/jobs")
@document(
    "Submit a whole-plate job: uploaded images (multipart) or a manifest of files under the input root",
    tag="jobs", query=JobParams, body={"application/json": JobManifest, "multipart/form-data": MULTIPART_IMAGES},
    responses={200: JobStatus, 202: JobStatus, **{status: ErrorResponse for status in _ERRORS}},
)
def submit_job() -> Response:
    """202 with the new job; 200 with the existing one when its Idempotency-Key was seen."""
    jobs = _jobs()
    params = JobParams.model_validate(request.args.to_dict())
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 0 < len(key) <= _MAX_KEY_LENGTH:
        raise InvalidInput(f"Idempotency-Key must be 1 to {_MAX_KEY_LENGTH} characters")
    if request.mimetype == "multipart/form-data":
        submission = _uploaded(params, key)
    elif request.mimetype == "application/json":
        submission = _manifest(params, key)
    else:
        raise UnsupportedMediaType("POST /jobs takes multipart/form-data (uploads) or application/json (a manifest)")
    job_id, created = jobs.store.submit(submission)
    response = _status_response(jobs.store.status(job_id), 202 if created else 200)
    response.headers["Location"] = f"/jobs/{job_id}"
    return response


def _check_count(count: int) -> None:
    limit = get_pipeline().settings.jobs_max_items
    if count > limit:
        raise TooManyImages(f"{count} images in one job; the limit is {limit} (SERVING_JOBS_MAX_ITEMS)")


def _uploaded(params: JobParams, key: str | None) -> JobSubmission:
    files = request.files.getlist("image")
    if not files:
        raise NoImage(f"multipart body has no 'image' field (fields: {sorted(request.files)})")
    _check_count(len(files))
    samples = multipart_metadata(len(files))
    datas = [file.read() for file in files]
    new = [NewItem(source=file.filename or str(index), uploaded=data,
                   sample={**sample.model_dump(exclude_none=True), "id": sample.id or file.filename or str(index)})
           for index, (file, sample, data) in enumerate(zip(files, samples, datas))]
    described = [{"source": item.source, "sample": item.sample} for item in new]
    return JobSubmission(params, new, request_sha256("upload", params.model_dump(), described, datas), key)


def _manifest(params: JobParams, key: str | None) -> JobSubmission:
    body = read_json_body()
    if isinstance(body, dict) and isinstance(body.get("items"), list):
        _check_count(len(body["items"]))
    manifest = JobManifest.model_validate(body)
    root = get_pipeline().settings.jobs_input_root
    new = []
    for item in manifest.items:
        resolve_under(root, item.path)  # refused now (400/403), and checked again when read
        sample = item.model_dump(include=_SAMPLE_FIELDS, exclude_none=True)
        new.append(NewItem(source=item.path, page=item.page, sample={**sample, "id": item.id or item.path}))
    described = [{"source": item.source, "page": item.page, "sample": item.sample} for item in new]
    return JobSubmission(params, new, request_sha256("manifest", params.model_dump(), described), key)


@bp.get("/jobs/<job_id>")
@document("A job's state, progress (done/total, images/s, ETA) and errors", tag="jobs",
          responses={200: JobStatus, 404: ErrorResponse, 503: ErrorResponse})
def job_status(job_id: str) -> Response:
    return _status_response(_jobs(job_id).store.status(job_id))


@bp.delete("/jobs/<job_id>")
@document("Cancel a job: unfinished images are not run; finished results stay", tag="jobs",
          responses={200: JobStatus, 404: ErrorResponse, 409: ErrorResponse, 503: ErrorResponse})
def cancel_job(job_id: str) -> Response:
    return _status_response(_jobs(job_id).store.cancel(job_id))


@bp.get("/jobs/<job_id>/results")
@document("A job's per-image rows and per-well summary so far; CSV with ?format=csv or Accept: text/csv "
          "(?table=images|wells|plates)", tag="jobs",
          responses={200: JobResults, 404: ErrorResponse, 503: ErrorResponse}, response_media="application/json")
def job_results(job_id: str) -> Response:
    store = _jobs(job_id).store
    status = store.status(job_id)  # 404 first
    results, csv_rows = [], []
    for row in store.results(job_id):
        body: dict[str, Any] = json.loads(row.prediction)
        results.append(body)
        fields = {name: value for name, value in body.items() if name not in ("source", "provenance")}
        csv_rows.append(csv_row(Prediction.model_validate(fields), row.p_positive,
                                Provenance.model_validate(body["provenance"]), job_id))
    images = [dict(zip(CSV_COLUMNS, (str(value) for value in values))) for values in csv_rows]
    wells = summarize_wells(images)
    wanted = request.args.get("format") or request.accept_mimetypes.best_match(["application/json", "text/csv"])
    if wanted in ("csv", "text/csv"):
        table = request.args.get("table", "images")
        if table == "wells":
            text = csv_text([[well[c] for c in WELL_COLUMNS] for well in wells], WELL_COLUMNS)
        elif table == "plates":
            text = csv_text([[p[c] for c in PLATE_COLUMNS] for p in summarize_plates(wells)], PLATE_COLUMNS)
        elif table == "images":
            text = csv_text(csv_rows)
        else:
            raise InvalidInput(f"table must be images, wells or plates, not {table!r}")
        return Response(text, mimetype="text/csv")
    return jsonify(JobResults(job=status, results=results, wells=wells, plates=summarize_plates(wells)).model_dump())
