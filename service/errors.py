"""The service's error tree and the one JSON shape every error leaves the service in.

Each class carries its HTTP status and a stable machine-readable `code`; views raise, never
catch, and `register_error_handlers` turns everything into `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, has_request_context, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

_log = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of every error the service answers on purpose."""

    status_code = 500
    code = "internal"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def headers(self) -> dict[str, str]:
        return {}


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


class UnsupportedMediaType(ServiceError):
    status_code = 415
    code = "unsupported_media_type"


class ModelNotFound(ServiceError):
    status_code = 404
    code = "model_not_found"


class ModelNotReady(ServiceError):
    status_code = 503
    code = "model_not_ready"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class QueueFull(ServiceError):
    """Load shedding: the worker's queue is full, come back shortly."""

    status_code = 503
    code = "queue_full"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class ShuttingDown(QueueFull):
    code = "shutting_down"


class BackendUnavailable(ServiceError):
    status_code = 503
    code = "backend_unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class BackendTimeout(ServiceError):
    status_code = 504
    code = "timeout"


class BackendError(ServiceError):
    """The remote model server answered with an error we cannot attribute to the request."""

    status_code = 502
    code = "backend_error"


class BackendFailed(ServiceError):
    """The model call itself raised: only the requests in that batch get this."""

    status_code = 500
    code = "model_error"


PROTOCOL_PREFIXES = ("/v1/", "/v2/")


def error_response(status: int, code: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> Response:
    """Build the one error body shape; also used by the request-size guard."""
    if has_request_context():
        g.error_code = code  # read by the access log and the rejections metric
        if request.path.startswith(PROTOCOL_PREFIXES) or request.path == "/v2":
            # TF Serving REST and the Open Inference Protocol answer {"error": "<message>"}, and
            # know no 422: their clients see the shape and statuses they were written for.
            response = jsonify({"error": message})
            response.status_code = 400 if status == 422 else status
            response.headers.update(headers or {})
            return response
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    response = jsonify({"error": error})
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def register_error_handlers(app: Flask) -> None:
    """Install the three handlers: our tree, pydantic validation, and werkzeug's HTTP errors."""

    @app.errorhandler(ServiceError)
    def _service_error(err: ServiceError) -> Response:
        if err.status_code >= 500:
            _log.warning("request failed: %s: %s", err.code, err.message)
        return error_response(err.status_code, err.code, err.message, err.details, err.headers())

    @app.errorhandler(ValidationError)
    def _validation_error(err: ValidationError) -> Response:
        details = err.errors(include_url=False, include_context=False, include_input=False)
        first = details[0] if details else {"loc": (), "msg": "invalid"}
        where = ".".join(str(part) for part in first["loc"]) or "body"
        return error_response(422, "validation_error", f"request failed validation: {where}: {first['msg']}", details)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Response:
        if isinstance(err, RequestEntityTooLarge):
            return error_response(413, BodyTooLarge.code, "request body exceeds the size limit")
        status = err.code or 500
        code = (err.name or "error").lower().replace(" ", "_")
        return error_response(status, code, err.description or err.name)

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        _log.exception("unhandled error")
        return error_response(500, ServiceError.code, "internal server error")


# --- decoder hardening (service/codecs) --------------------------------------------------------


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

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}
