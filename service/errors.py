"""The service's error tree: what can go wrong, with its HTTP status and stable code.

Each class carries `status_code`, a machine-readable `code` and, for 503s, `retry_after_s` as
class attributes; nothing here knows about HTTP frameworks. Views raise, never catch, and
`service.api.errors` renders every error in the shape of the protocol that was called.
"""

from __future__ import annotations

import re
from typing import Any


class ServiceError(Exception):
    """Base of every error the service answers on purpose."""

    status_code = 500
    code = "internal"
    retry_after_s: int | None = None
    """Seconds a client should wait before retrying; sent as `Retry-After` when set."""

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidInput(ServiceError):
    status_code = 400
    code = "invalid_input"


class NoImage(InvalidInput):
    code = "no_image"


class InvalidBase64(InvalidInput):
    code = "invalid_base64"


class UndecodableImage(InvalidInput):
    code = "undecodable_image"


class InvalidImageShape(ServiceError):
    status_code = 422
    code = "invalid_image_shape"


class NonFiniteInput(ServiceError):
    """NaN or infinite pixel values: no model answer for them would mean anything."""

    status_code = 422
    code = "non_finite_input"


class TooManyImages(ServiceError):
    status_code = 413
    code = "too_many_images"


class ImageTooLarge(ServiceError):
    """A decompression bomb or an absurdly large field: refused before it is decoded."""

    status_code = 413
    code = "image_too_large"


class BodyTooLarge(ServiceError):
    status_code = 413
    code = "body_too_large"


class RequestTimeout(ServiceError):
    """The client did not send its whole request within the read deadline."""

    status_code = 408
    code = "request_timeout"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    code = "unsupported_media_type"


class ModelNotFound(ServiceError):
    status_code = 404
    code = "model_not_found"


class ModelNotReady(ServiceError):
    status_code = 503
    code = "model_not_ready"
    retry_after_s = 5


class QueueFull(ServiceError):
    """Load shedding: the worker's queue is full, come back shortly."""

    status_code = 503
    code = "queue_full"
    retry_after_s = 1

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s  # from the queue's measured drain time


class ShuttingDown(QueueFull):
    code = "shutting_down"


class BackendUnavailable(ServiceError):
    status_code = 503
    code = "backend_unavailable"
    retry_after_s = 1


class BackendTimeout(ServiceError):
    status_code = 504
    code = "timeout"


class RemoteBackendError(ServiceError):
    """The remote model server answered with an error we cannot attribute to the request."""

    status_code = 502
    code = "backend_error"


class ModelCallFailed(ServiceError):
    """The model call itself raised: only the requests in that batch get this."""

    status_code = 500
    code = "model_error"


class TooManyPages(ServiceError):
    """A TIFF whose IFD chain is longer than `max_tiff_pages`: refused before any page is read."""

    status_code = 413
    code = "too_many_pages"


class UnsupportedCompression(ServiceError):
    """A TIFF compression outside the allow-list (none, LZW, deflate, PackBits, zstd, JPEG)."""

    status_code = 415
    code = "unsupported_compression"


class DecodeBudgetExhausted(ServiceError):
    """The worker's decoded-pixel budget stayed full past the request's wait: retry shortly."""

    status_code = 503
    code = "decode_budget_exhausted"
    retry_after_s = 1


class ExplainUnavailable(ServiceError):
    """The model version cannot explain (no `explain` signature in its SavedModel)."""

    status_code = 501
    code = "explain_unavailable"


class NotAcceptable(ServiceError):
    """No representation the client accepts (e.g. one PNG asked for several images)."""

    status_code = 406
    code = "not_acceptable"


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.@+~-]+/)+([\w.@+~-]+)")


def redact_paths(text: str) -> str:
    """Absolute file paths (from library error messages) reduced to their last part.

    Error text of TensorFlow, tifffile or a failed load may name files on the server; the
    server's log keeps the full message, a client sees `…/saved_model.pb`.
    """
    return _ABSOLUTE_PATH.sub(r"…/\1", text)


# --- whole-plate jobs (service/jobs) -----------------------------------------------------------


class JobsDisabled(ServiceError):
    """No job database is configured (SERVING_DATA_DIR or SERVING_JOBS_DATABASE_URL)."""

    status_code = 503
    code = "jobs_disabled"


class JobsDatabaseUnavailable(ServiceError):
    """The job database cannot be reached (restarting, network): /predict is unaffected."""

    status_code = 503
    code = "jobs_database_unavailable"
    retry_after_s = 5


class JobNotFound(ServiceError):
    status_code = 404
    code = "job_not_found"


class JobFinished(ServiceError):
    """A job that already succeeded or failed cannot be cancelled."""

    status_code = 409
    code = "job_finished"


class IdempotencyKeyReused(ServiceError):
    """The same Idempotency-Key came with a different request (IETF httpapi idempotency draft)."""

    status_code = 422
    code = "idempotency_key_reused"


class InvalidPath(InvalidInput):
    """A manifest path that is absolute, empty or climbs with `..`."""

    code = "invalid_path"


class InputNotFound(InvalidInput):
    code = "input_not_found"


class InputRootNotConfigured(InvalidInput):
    """A manifest of paths, but SERVING_JOBS_INPUT_ROOT is unset: only uploads are accepted."""

    code = "input_root_not_configured"


class PathOutsideInputRoot(ServiceError):
    """A manifest path that resolves (through a symlink) outside the input root."""

    status_code = 403
    code = "path_outside_input_root"
