"""401 before a body is read when API keys are configured (`service.api_keys`)."""

from __future__ import annotations

from flask import Flask, Response, request

from service.api.errors import error_response
from service.api_keys import ApiKeys
from service.config import Settings

_REALM = 'Bearer realm="cpe-serving"'
KEYS_EXTENSION = "serving_api_keys"


def install_authentication(app: Flask, settings: Settings) -> None:
    """Refuse requests without a valid key (401) when keys are configured."""
    keys = ApiKeys(settings)
    if not keys.enabled:
        return
    app.extensions[KEYS_EXTENSION] = keys  # the OpenAPI document says which routes need one

    @app.before_request
    def _authenticate() -> Response | None:
        if keys.allows(request.path, request.headers.get("Authorization"), request.headers.get("X-API-Key")):
            return None
        response = error_response(401, "unauthorized", "a valid API key is required "
                                  "(Authorization: Bearer <key> or X-API-Key: <key>)")
        response.headers["WWW-Authenticate"] = _REALM
        return response
