"""Gunicorn's gthread worker with a read deadline, so slow or stalled clients cannot hold threads.

Stock gthread reads a request's headers and body with blocking reads and no time limit: 16
connections that send a few bytes and stop take every thread of a worker, /healthz stops
answering and the kubelet restarts the pod. Here each request gets one total deadline for
everything it reads (headers and body), counted from its first read: past it, a client still
sending headers gets `408` and is closed; one still sending its body gets the same from
`service.api.body` (as JSON, through the app). Sockets keep gunicorn's own code path: only
their reads learn about the deadline.
"""

from __future__ import annotations

import os
import socket
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from gunicorn.http.errors import NoMoreData
from gunicorn.workers.gthread import TConn, ThreadWorker

READ_TIMEOUT_ENV = "SERVING_REQUEST_READ_TIMEOUT_S"
T = TypeVar("T")
_HEADERS, _BODY = "headers", "body"

_TIMEOUT_BODY = b'{"error": {"code": "request_timeout", "message": "request headers not received in time"}}'
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
    + f"Content-Length: {len(_TIMEOUT_BODY)}\r\n\r\n".encode() + _TIMEOUT_BODY
)


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
                self.sendall(_TIMEOUT_RESPONSE)
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


class DeadlineThreadWorker(ThreadWorker):
    """gthread, with every client socket a DeadlineSocket (see the module docstring), that stops
    listening when it starts draining.

    Stock gthread only stops *watching* its listening socket on SIGTERM: the socket stays open
    for the whole drain (up to graceful_timeout), so new connections complete their handshake,
    send a request and are reset when the worker exits: the client cannot tell whether it ran.
    Here what is already waiting is accepted (and answered), then the socket is closed, so later
    clients are refused at connect and can safely retry elsewhere.
    """

    def init_process(self) -> None:
        DeadlineSocket.read_timeout_s = float(os.environ.get(READ_TIMEOUT_ENV, DeadlineSocket.read_timeout_s))
        super().init_process()

    def enqueue_req(self, conn: Any) -> None:
        if type(conn.sock) is socket.socket:
            conn.sock.__class__ = DeadlineSocket  # same layout: only the read methods differ
        arm_read_deadline(conn.sock)
        super().enqueue_req(conn)

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            self._stop_listening()

    def _stop_listening(self) -> None:
        for listener in self.sockets:
            try:
                listener.setblocking(False)
                while True:
                    try:
                        client, address = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    self.nr_conns += 1
                    client.setblocking(True)
                    self.enqueue_req(TConn(self.cfg, client, address, listener.getsockname()))
                listener.close()
            except OSError as err:  # a listener already closed: nothing left to refuse
                self.log.debug("closing listener on shutdown: %s", err)
