"""A job's images: files named by a manifest under the mounted input root, or uploads.

A manifest path is relative and stays inside the input root after every symlink is followed:
`..`, absolute paths and links that lead out are refused at submission (400/403), and checked
again when the file is read, since the tree can change while the job waits.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from service.errors import (
    ImageTooLarge,
    InputNotFound,
    InputRootNotConfigured,
    InvalidPath,
    PathOutsideInputRoot,
)


def resolve_under(root: Path | None, relative: str) -> Path:
    """The regular file `relative` names inside `root`.

    Raises:
        InputRootNotConfigured: no input root is set (400).
        InvalidPath: absolute, `..`, backslashes or NUL (400).
        PathOutsideInputRoot: it resolves outside the root, through a symlink (403).
        InputNotFound: no regular file there (400).
    """
    if root is None:
        raise InputRootNotConfigured("this server has no SERVING_JOBS_INPUT_ROOT: upload the images instead")
    pure = PurePosixPath(relative)
    if pure.is_absolute() or "\\" in relative or "\x00" in relative or ".." in pure.parts or not pure.parts:
        raise InvalidPath(f"{relative!r}: give a path relative to the input root, without '..'")
    base = root.resolve(strict=True)
    try:
        resolved = (base / pure).resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError) as err:
        raise InputNotFound(f"{relative!r} does not exist under the input root") from err
    except (OSError, RuntimeError) as err:  # symlink loops
        raise InvalidPath(f"{relative!r} cannot be resolved") from err
    if not resolved.is_relative_to(base):
        raise PathOutsideInputRoot(f"{relative!r} leads outside the input root")
    if not stat.S_ISREG(resolved.stat().st_mode):
        raise InputNotFound(f"{relative!r} is not a regular file")
    return resolved


def read_under(root: Path | None, relative: str, max_bytes: int) -> bytes:
    """The bytes of a manifest's file, re-checked against the root, bounded like a request body."""
    path = resolve_under(root, relative)
    with open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NOFOLLOW)) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageTooLarge(f"{relative!r} is larger than {max_bytes} bytes (SERVING_MAX_BODY_BYTES)")
    return data


def request_sha256(kind: str, params: dict[str, Any], items: list[dict[str, Any]],
                   uploads: list[bytes] | None = None) -> str:
    """What identifies a submission for Idempotency-Key: parameters, items, and the uploads' bytes."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"kind": kind, "params": params, "items": items}, sort_keys=True).encode())
    for data in uploads or []:
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()
