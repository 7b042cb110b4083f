"""Every error leaves the service here, in the JSON shape of the protocol that was called.

This service's own routes answer `{"error": {"code", "message"[, "details"]}}`. TF Serving's
REST API and the Open Inference Protocol answer `{"error": "<message>"}` and know no 422: their
clients see the shapes and statuses they were written for. Which shape applies is decided by
the blueprint that owns the route (or, for a URL that matched no route, the blueprint whose
prefix it falls under), never by strings of URL prefixes.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, Response, g, has_request_context, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from service.errors import BodyTooLarge, ServiceError, redact_paths

_log = logging.getLogger(__name__)

#: Blueprints whose clients expect the `{"error": "<message>"}` shape (TF Serving, v2).
_PLAIN_MESSAGE_BLUEPRINTS: dict[str, str | None] = {}


def answers_plain_errors(blueprint: Blueprint, *, unmatched_prefix: str | None = None) -> Blueprint:
    """Mark a protocol blueprint as answering `{"error": "<message>"}` errors.

    `unmatched_prefix` (default: the blueprint's url_prefix) claims URLs that match no route,
    e.g. all of `/v1` for TF Serving's API mounted at `/v1/models`.
    """
    _PLAIN_MESSAGE_BLUEPRINTS[blueprint.name] = unmatched_prefix or blueprint.url_prefix
    return blueprint


def _plain_message_protocol() -> bool:
    if request.blueprint is not None:
        return request.blueprint in _PLAIN_MESSAGE_BLUEPRINTS
    # No route matched (404/405): the prefix of the protocol the client was talking to decides.
    return any(
        prefix and (request.path == prefix or request.path.startswith(prefix.rstrip("/") + "/"))
        for prefix in _PLAIN_MESSAGE_BLUEPRINTS.values()
    )


def error_response(status: int, code: str, message: str, details: Any = None,
                   retry_after_s: int | None = None) -> Response:
    """Build the error body for the current request's protocol."""
    if status >= 500:
        message = redact_paths(message)
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else {}
    if has_request_context():
        g.error_code = code  # read by the access log and the rejections metric
        if _plain_message_protocol():
            response = jsonify({"error": message})
            response.status_code = 400 if status == 422 else status
            response.headers.update(headers)
            return response
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    response = jsonify({"error": error})
    response.status_code = status
    response.headers.update(headers)
    return response


def register_error_handlers(app: Flask) -> None:
    """Install the handlers: our tree, pydantic validation, werkzeug's HTTP errors, the rest."""

    @app.errorhandler(ServiceError)
    def _service_error(err: ServiceError) -> Response:
        if err.status_code >= 500:
            _log.warning("request failed: %s: %s", err.code, err.message)
        return error_response(err.status_code, err.code, err.message, err.details, err.retry_after_s)

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
