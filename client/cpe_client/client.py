"""The HTTP side: POST /predict as multipart with retries, GET /status for the server's limits,
and whole-plate jobs (POST /jobs, then follow and read them)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import httpx

from cpe_client.encode import png_bytes
from cpe_client.packing import Limits, pack
from cpe_client.retry import RETRY_STATUSES, RetryPolicy, parse_retry_after

if TYPE_CHECKING:
    from cpe_client.runner import RunSummary

_CONTENT_TYPES = {".tif": "image/tiff", ".tiff": "image/tiff", ".png": "image/png",
                  ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


class ApiError(Exception):
    """A request that failed for good (after retries, where retrying made sense)."""

    def __init__(self, status: int | None, code: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{status or 'no answer'} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = f"http_{response.status_code}", response.text[:200]
        return cls(response.status_code, code, message, parse_retry_after(response.headers.get("Retry-After")))


class Stopped(Exception):
    """The client was closed (Ctrl-C) while a request waited to be retried."""


@dataclass(frozen=True)
class Upload:
    """One image to send: its file name, bytes and the metadata object for the `metadata` field."""

    name: str
    data: bytes
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Prediction:
    """The answer for one image; optional fields missing from the server's JSON are empty."""

    id: str
    label: str
    p_infected: float | None
    probabilities: dict[str, float]
    model: str
    model_version: int | None
    qc_status: str = ""
    qc_reasons: tuple[str, ...] = ()
    preprocessing_hash: str = ""
    request_id: str = ""

    @classmethod
    def from_json(cls, item: dict[str, Any], body: dict[str, Any]) -> Prediction:
        probabilities = {str(k): float(v) for k, v in (item.get("probabilities") or {}).items()}
        qc = item.get("qc") or {}
        return cls(
            id=str(item.get("id", "")),
            label=str(item.get("label", "")),
            p_infected=probabilities.get("infected"),
            probabilities=probabilities,
            model=str(item.get("model") or body.get("model") or ""),
            model_version=item.get("model_version", body.get("model_version")),
            qc_status=str(qc.get("status") or ""),
            qc_reasons=tuple(str(r) for r in qc.get("reasons") or ()),
            preprocessing_hash=str(item.get("preprocessing_hash") or ""),
            request_id=str(body.get("request_id") or ""),
        )


def limits_from_status(status: dict[str, Any]) -> Limits:
    """`status["limits"]` when the server publishes it, else the service's defaults; images per
    request are also kept within the smallest batching queue, which refuses larger requests."""
    given = status.get("limits") or {}
    limits = Limits(
        max_body_bytes=int(given.get("max_body_bytes") or Limits.max_body_bytes),
        max_images_per_request=int(given.get("max_images_per_request") or Limits.max_images_per_request),
    )
    queues = [version["batching"]["max_queue_size"]
              for model in (status.get("models") or {}).values() if isinstance(model, dict)
              for version in model.get("versions") or ()
              if isinstance(version, dict) and isinstance(version.get("batching"), dict)
              and version["batching"].get("max_queue_size")]
    if queues:
        limits = Limits(limits.max_body_bytes, min(limits.max_images_per_request, min(queues)))
    return limits


class Client:
    """A synchronous, thread-safe client of one CPE server."""

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 120.0,
                 retry: RetryPolicy | None = None, transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.retries = 0  # retried attempts, for the run summary
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._http = httpx.Client(base_url=self.url, headers=headers, transport=transport,
                                  timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)))

    def close(self) -> None:
        """Stop waiting retries (they raise `Stopped`) and close the connections."""
        self._stop.set()
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def status(self) -> dict[str, Any]:
        """GET /status (models, versions, batching, limits when published)."""
        return self._with_retries(lambda: self._http.get("/status"))  # type: ignore[no-any-return]

    def limits(self) -> Limits:
        """What one request may carry on this server (the service's defaults where /status is missing)."""
        try:
            return limits_from_status(self.status())
        except ApiError as err:
            if err.status == 404:
                return Limits()
            raise

    def post_images(self, uploads: Sequence[Upload]) -> list[Prediction]:
        """One POST /predict with these images; answers in the order sent (count checked).

        Raises:
            ApiError: a non-retryable error, or retries exhausted (503/504/connection).
        """
        files = [("image", (u.name, u.data, _CONTENT_TYPES.get(Path(u.name).suffix.lower(), "application/octet-stream")))
                 for u in uploads]
        data = {"metadata": json.dumps([u.metadata or {"id": u.name} for u in uploads])}
        body = self._with_retries(lambda: self._http.post("/predict", files=files, data=data))
        items = body.get("predictions") or []
        if len(items) != len(uploads):
            raise ApiError(200, "count_mismatch", f"sent {len(uploads)} images, got {len(items)} answers")
        return [Prediction.from_json(item, body) for item in items]

    def predict(self, images: Sequence[str | Path | bytes | Any]) -> list[Prediction]:
        """Predictions for files, raw encoded bytes or uint8/uint16 arrays, in order."""
        uploads = []
        for index, image in enumerate(images):
            if isinstance(image, (str, Path)):
                uploads.append(Upload(Path(image).name, Path(image).read_bytes()))
            elif isinstance(image, bytes):
                uploads.append(Upload(f"image-{index}", image))
            else:
                uploads.append(Upload(f"array-{index}.png", png_bytes(image)))
        limits = self.limits()
        batches = pack(uploads, [len(u.data) for u in uploads], limits.max_images_per_request,
                       limits.body_budget_bytes)
        return [prediction for batch in batches for prediction in self.post_images(batch)]

    def run_plate(self, directory: str | Path, out: str | Path, **options: Any) -> RunSummary:
        """Classify every image of a plate folder into `out` (CSV), resuming; see `runner.run_plate`."""
        from cpe_client.runner import run_plate

        return run_plate(self, Path(directory), Path(out), **options)

    def submit_job(self, items: Sequence[dict[str, Any]] | None = None, uploads: Sequence[Upload] | None = None,
                   idempotency_key: str | None = None, **params: Any) -> dict[str, Any]:
        """POST /jobs: a manifest (`items`, each with a `path` under the server's input root and
        optional plate/well/site...) or `uploads`; `params` are model, version, qc, tiling.

        Retries are safe: every attempt carries the same Idempotency-Key (random when not
        given), so the server answers them all with one job.
        """
        if (items is None) == (uploads is None):
            raise ValueError("give either items (a manifest) or uploads")
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        if items is not None:
            return self._with_retries(  # type: ignore[no-any-return]
                lambda: self._http.post("/jobs", params=params, json={"items": list(items)}, headers=headers))
        files = [("image", (u.name, u.data, _CONTENT_TYPES.get(Path(u.name).suffix.lower(), "application/octet-stream")))
                 for u in uploads or ()]
        data = {"metadata": json.dumps([u.metadata for u in uploads or ()])}
        return self._with_retries(  # type: ignore[no-any-return]
            lambda: self._http.post("/jobs", params=params, files=files, data=data, headers=headers))

    def job(self, job_id: str) -> dict[str, Any]:
        """GET /jobs/{id}: state, progress (done/total, images/s, ETA) and errors."""
        return self._with_retries(lambda: self._http.get(f"/jobs/{job_id}"))  # type: ignore[no-any-return]

    def job_results(self, job_id: str) -> dict[str, Any]:
        """GET /jobs/{id}/results: per-image rows, per-well and per-plate summaries."""
        return self._with_retries(lambda: self._http.get(f"/jobs/{job_id}/results"))  # type: ignore[no-any-return]

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """DELETE /jobs/{id}."""
        return self._with_retries(lambda: self._http.delete(f"/jobs/{job_id}"))  # type: ignore[no-any-return]

    def wait_job(self, job_id: str, poll_s: float = 2.0, timeout_s: float | None = None) -> dict[str, Any]:
        """Poll a job until it is succeeded, failed or cancelled; returns its last status.

        Raises:
            TimeoutError: still running after `timeout_s`.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while (status := self.job(job_id))["state"] in ("queued", "running"):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {status['state']} after {timeout_s} s")
            if self._stop.wait(poll_s):
                raise Stopped()
        return status

    def _with_retries(self, send: Callable[[], httpx.Response]) -> Any:
        error: ApiError | None = None
        for attempt in range(self.retry.max_attempts):
            if self._stop.is_set():
                raise Stopped()
            try:
                response = send()
            except httpx.TransportError as err:  # refused, reset, timed out: worth another try
                error = ApiError(None, "connection_error", f"{type(err).__name__}: {err}")
            else:
                if response.status_code in (200, 202):  # 202: a job accepted
                    return response.json()
                error = ApiError.from_response(response)
                if response.status_code not in RETRY_STATUSES:
                    raise error
            if attempt + 1 < self.retry.max_attempts:
                with self._lock:
                    self.retries += 1
                if self._stop.wait(self.retry.delay_s(attempt, error.retry_after_s)):
                    raise Stopped()
        assert error is not None
        raise error
