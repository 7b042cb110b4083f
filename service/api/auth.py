"""Optional API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`, checked before a body is read.

Keys are kept only as SHA-256 digests (`SERVING_API_KEYS` is hashed at start; a key file holds
digests), and a presented key is compared against every digest in constant time. Which paths
answer without a key is a setting: by default the probes and `/metrics`. Without keys
configured every route is open, as before.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from flask import Flask, Response, request

from service.api.errors import error_response
from service.config import Settings

_REALM = 'Bearer realm="cpe-serving"'


def key_digest(key: str) -> str:
    """The SHA-256 hex digest a key file holds for `key` (`cpe-serving` operators: `sha256sum`)."""
    return hashlib.sha256(key.encode()).hexdigest()


def load_key_digests(settings: Settings) -> list[bytes]:
    """Digests of every configured key (empty: authentication is off).

    Raises:
        ValueError: a line of the key file is not a SHA-256 hex digest.
    """
    digests = [key_digest(key.strip()) for key in (settings.api_keys or "").split(",") if key.strip()]
    if settings.api_keys_file is not None:
        for number, line in enumerate(Path(settings.api_keys_file).read_text().splitlines(), 1):
            entry = line.split("#", 1)[0].strip().lower()
            if not entry:
                continue
            if len(entry) != 64 or any(c not in "0123456789abcdef" for c in entry):
                raise ValueError(f"{settings.api_keys_file}:{number}: not a SHA-256 hex digest")
            digests.append(entry)
    return [digest.encode() for digest in digests]


def _presented_key() -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer " and header[7:].strip():
        return header[7:].strip()
    return request.headers.get("X-API-Key") or None


def install_authentication(app: Flask, settings: Settings) -> None:
    """Refuse requests without a valid key (401) when keys are configured."""
    digests = load_key_digests(settings)
    if not digests:
        return
    public = {path.strip() for path in settings.public_paths.split(",") if path.strip()}

    @app.before_request
    def _authenticate() -> Response | None:
        if request.path in public:
            return None
        key = _presented_key()
        presented = key_digest(key).encode() if key is not None else b"\0" * 64
        matched = False
        for digest in digests:  # every digest, always: the time does not tell which matched
            matched |= hmac.compare_digest(presented, digest)
        if matched and key is not None:
            return None
        response = error_response(401, "unauthorized", "a valid API key is required "
                                  "(Authorization: Bearer <key> or X-API-Key: <key>)")
        response.headers["WWW-Authenticate"] = _REALM
        return response
