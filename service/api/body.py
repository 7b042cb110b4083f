"""Request bodies read once, whole, bounded in size and time, and kept in memory.

Before any view runs, the body is read from the socket into memory: a body over
`max_body_bytes` is refused with 413 whether or not it declared its length (a chunked body was
once cut to the limit and its prefix decoded), a client that stalls past the read deadline of
`service.gunicorn_worker` gets 408, and multipart parts stay in memory instead of spooling to
the pod's small shared /tmp.
"""

from __future__ import annotations

import io
import socket as socket_module
from typing import IO, Any

from flask import Flask, Request, request

from service.errors import BodyTooLarge, RequestTimeout
from service.read_deadline import ReadDeadlineExceeded, disarm_read_deadline, enter_body_phase

_CHUNK_BYTES = 1 << 20


class InMemoryRequest(Request):
    """A Flask request whose multipart parts are kept in memory (the body's size is bounded)."""

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None, content_length: int | None = None) -> IO[bytes]:
        return io.BytesIO()


def install_body_reader(app: Flask, max_body_bytes: int) -> None:
    """Read every request's body first (see the module docstring)."""
    app.request_class = InMemoryRequest

    @app.before_request
    def _read_body() -> None:
        environ = request.environ
        socket = environ.get("gunicorn.socket")
        enter_body_phase(socket)
        try:
            body = _read_bounded(environ, max_body_bytes)
        except (ReadDeadlineExceeded, TimeoutError) as err:
            _stop_reading(socket)
            raise RequestTimeout("the request body was not received in time") from err
        except BodyTooLarge:
            _stop_reading(socket)
            raise
        finally:
            disarm_read_deadline(socket)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("wsgi.input_terminated", None)
        environ.pop("HTTP_TRANSFER_ENCODING", None)


def _stop_reading(sock: Any) -> None:
    """Whatever the client still sends is not read: after the answer the connection ends
    (gunicorn sees end of input) instead of waiting for the rest of a body on keep-alive."""
    if sock is not None:
        try:
            sock.shutdown(socket_module.SHUT_RD)
        except OSError:
            pass


def _read_bounded(environ: dict[str, Any], limit: int) -> bytes:
    declared = environ.get("CONTENT_LENGTH")
    length = int(declared) if declared and declared.isdigit() else None
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    if length is not None and length > limit:
        raise BodyTooLarge("request body exceeds the size limit")
    if length is None and not chunked:
        return b""
    stream = environ["wsgi.input"]
    wanted = length if length is not None else limit + 1
    parts, received = [], 0
    while received < wanted:
        part = stream.read(min(_CHUNK_BYTES, wanted - received))
        if not part:
            break
        parts.append(part)
        received += len(part)
    if received > limit:
        raise BodyTooLarge("request body exceeds the size limit")
    return b"".join(parts)
