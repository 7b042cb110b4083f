"""Read deadlines for requests read in gunicorn's request threads.

Requests the worker's event loop does not read whole first (TLS, a request pipelined behind
another, `SERVING_REQUEST_BUFFER_BYTES=0`: see `service.gunicorn_worker`) are read by their
thread with blocking reads. Each such request gets one total deadline for everything it reads
(headers and body), counted from its first read: past it, a client still sending headers gets
`408` here and is closed; one still sending its body gets the same from `service.api.body` (as
JSON, through the app). Sockets keep gunicorn's own code path: only their reads learn about the
deadline. The deadline record also says when the request was handed to a thread (`queued_at`).
"""

from __future__ import annotations

import socket
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from gunicorn.http.errors import NoMoreData

T = TypeVar("T")
_HEADERS, _BODY = "headers", "body"



def _timeout_response(what: str) -> bytes:
    message = f"request {what} not received in time"
    body = b'{"error": {"code": "request_timeout", "message": "' + message.encode() + b'"}}'
    return (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


TIMEOUT_RESPONSE = _timeout_response("headers")
BODY_TIMEOUT_RESPONSE = _timeout_response("body")


class ReadDeadlineExceeded(NoMoreData):
    """The client did not send its request within the read deadline (gunicorn closes quietly)."""


class _Deadline:
    __slots__ = ("at", "phase", "queued_at")

    def __init__(self) -> None:
        self.at: float | None = None
        self.phase = _HEADERS
        self.queued_at = time.monotonic()  # handed to the thread pool (accepted, or readable again)


_deadlines: weakref.WeakKeyDictionary[socket.socket, _Deadline] = weakref.WeakKeyDictionary()


class DeadlineSocket(socket.socket):
    """A client socket whose reads share one deadline per request."""

    __slots__ = ()
    read_timeout_s = 30.0

    def setblocking(self, flag: bool) -> None:
        # gunicorn makes sockets blocking before it reads a request: blocking, but bounded.
        if flag:
            self.settimeout(self.read_timeout_s)
        else:
            super().setblocking(False)

    def _remaining_s(self) -> float | None:
        deadline = _deadlines.get(self)
        if deadline is None:
            return None
        now = time.monotonic()
        if deadline.at is None:
            deadline.at = now + self.read_timeout_s
        remaining = deadline.at - now
        if remaining <= 0:
            self._give_up(deadline)
        self.settimeout(remaining)
        return remaining

    def _give_up(self, deadline: _Deadline) -> None:
        if deadline.phase == _HEADERS:
            try:
                self.settimeout(1.0)
                self.sendall(TIMEOUT_RESPONSE)
            except OSError:
                pass
        raise ReadDeadlineExceeded(f"request not received within {self.read_timeout_s:g} s")

    def _bounded(self, read: Callable[[], T]) -> T:
        """Run one read within what is left of the request's deadline."""
        self._remaining_s()
        try:
            return read()
        except TimeoutError:
            deadline = _deadlines.get(self)
            if deadline is None:
                raise
            self._give_up(deadline)
            raise

    def recv(self, size: int, flags: int = 0) -> bytes:
        return self._bounded(lambda: super(DeadlineSocket, self).recv(size, flags))

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        return self._bounded(lambda: super(DeadlineSocket, self).recv_into(buffer, nbytes, flags))


def arm_read_deadline(sock: socket.socket) -> None:
    """Start a new request's deadline at its first read (headers phase)."""
    if isinstance(sock, DeadlineSocket):
        _deadlines[sock] = _Deadline()


def queued_at(sock: object) -> float | None:
    """When the request's connection was handed to the worker's thread pool (monotonic)."""
    deadline = _deadlines.get(sock) if isinstance(sock, DeadlineSocket) else None
    return deadline.queued_at if deadline is not None else None


def enter_body_phase(sock: object) -> None:
    """Headers are in; what times out from now on is the body (answered 408 by the app)."""
    deadline = _deadlines.get(sock) if isinstance(sock, DeadlineSocket) else None
    if deadline is not None:
        deadline.phase = _BODY


def disarm_read_deadline(sock: object) -> None:
    """The request is read: writing the response is not bounded by the read deadline."""
    if isinstance(sock, DeadlineSocket):
        _deadlines.pop(sock, None)
        sock.settimeout(None)
