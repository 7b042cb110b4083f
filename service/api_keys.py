"""Optional API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`, without Flask.

Keys are kept only as SHA-256 digests (`SERVING_API_KEYS` is hashed at start; a key file holds
digests), and a presented key is compared against every digest in constant time. Which paths
answer without a key is a setting: by default the probes and `/metrics`. Used by the app
(`service.api.auth`, 401 before a body is read) and by the worker's event loop, which does not
buffer the body of a request the app will refuse (`service.gunicorn_worker`).
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from service.config import Settings


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


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a request presents, from either header."""
    header = authorization or ""
    if header[:7].lower() == "bearer " and header[7:].strip():
        return header[7:].strip()
    return x_api_key or None


class ApiKeys:
    """The configured keys and public paths; `enabled` is false without keys."""

    def __init__(self, settings: Settings) -> None:
        self.digests = load_key_digests(settings)
        entries = {path.strip() for path in settings.public_paths.split(",") if path.strip()}
        self.public = {path for path in entries if not path.endswith("/")}
        self.public_prefixes = tuple(sorted(path for path in entries if path.endswith("/")))

    def is_public(self, path: str) -> bool:
        """An exact public path, or under one ending in "/" (e.g. "/docs/assets/")."""
        return path in self.public or path.startswith(self.public_prefixes)

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def allows(self, path: str, authorization: str | None, x_api_key: str | None) -> bool:
        """Whether a request for `path` with these headers may proceed."""
        if not self.digests or self.is_public(path):
            return True
        key = presented_key(authorization, x_api_key)
        presented = key_digest(key).encode() if key is not None else b"\0" * 64
        matched = False
        for digest in self.digests:  # every digest, always: the time does not tell which matched
            matched |= hmac.compare_digest(presented, digest)
        return matched and key is not None
