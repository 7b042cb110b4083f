"""Gunicorn's gthread worker that reads whole requests before it gives them a thread.

Stock gthread reads a request's headers and body in a request thread with blocking reads and no
time limit: 16 connections that send a few bytes and stop take every thread of a worker,
/healthz stops answering and the kubelet restarts the pod. Here the worker's event loop reads
each request without blocking until it is complete (`service.request_buffer`, like nginx's
request buffering) and only then hands it to a thread; a request not complete within the read
deadline gets `408` and is closed by the loop, having held no thread. The buffered bytes of a
worker are bounded (`SERVING_REQUEST_BUFFER_BYTES`): past that, bodies wait unread (TCP pushes
back on their senders) while headers and small requests still get through.

What the loop does not buffer (TLS, a pipelined request, buffering switched off) is read in its
thread within one total deadline (`service.read_deadline`).
"""

from __future__ import annotations

import selectors
import socket
import time
from collections import deque
from functools import partial
from typing import Any

from gunicorn import http
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import TConn, ThreadWorker

from service.api_keys import ApiKeys
from service.config import ServerSettings, Settings
from service.read_deadline import (
    BODY_TIMEOUT_RESPONSE,
    TIMEOUT_RESPONSE,
    DeadlineSocket,
    arm_read_deadline,
)
from service.request_buffer import Framing, PrefetchedSocket, RequestFraming, continue_response

# One read per event, as large as the kernel holds: every read in the loop first waits for the GIL
# (up to the 5 ms switch interval), so 256 KiB reads made the loop the bottleneck for 2.7 MB bodies.
_RECV_BYTES = 4 * 1024 * 1024
_MAX_HEADER_BYTES = 64 * 1024


class _Prefetch:
    """One request being read by the event loop."""

    __slots__ = ("buf", "conn", "deadline", "done", "framing", "paused")

    def __init__(self, conn: TConn, deadline: float, max_body_bytes: int) -> None:
        self.conn = conn
        self.buf = bytearray()
        self.framing = RequestFraming(_MAX_HEADER_BYTES, max_body_bytes)
        self.deadline = deadline
        self.paused = False
        self.done = False


class DeadlineThreadWorker(ThreadWorker):
    """gthread that buffers requests in its event loop (see the module docstring) and stops
    listening when it starts draining.

    Stock gthread only stops *watching* its listening socket on SIGTERM: the socket stays open
    for the whole drain (up to graceful_timeout), so new connections complete their handshake,
    send a request and are reset when the worker exits: the client cannot tell whether it ran.
    Here what is already waiting is accepted (and answered), then the socket is closed, so later
    clients are refused at connect and can safely retry elsewhere.
    """

    def init_process(self) -> None:
        # The same SERVING_* variables gunicorn_conf and the app read, so all three agree.
        server = ServerSettings()
        DeadlineSocket.read_timeout_s = server.request_read_timeout_s
        self.buffer_budget = server.request_buffer_bytes
        self.buffered_bytes = 0  # read by the loop and not yet answered
        self._reading: deque[_Prefetch] = deque()  # in deadline order (one timeout for all)
        self._paused: deque[_Prefetch] = deque()
        self._held: dict[TConn, int] = {}  # buffered bytes of requests handed to threads
        try:
            settings = Settings()
            self.api_keys: ApiKeys | None = ApiKeys(settings)
            self.max_body_bytes = settings.max_body_bytes
        except ValueError:  # invalid settings or key file: the app refuses to start with the reason
            self.api_keys = None
            self.max_body_bytes = Settings.model_fields["max_body_bytes"].default
        super().init_process()

    def enqueue_req(self, conn: Any) -> None:
        if type(conn.sock) is socket.socket:
            conn.sock.__class__ = DeadlineSocket  # same layout: only the read methods differ
        if self._can_buffer(conn):
            self._start_reading(conn)
        else:
            self._dispatch(conn)

    def _dispatch(self, conn: TConn) -> None:
        arm_read_deadline(conn.sock)
        super().enqueue_req(conn)

    def _can_buffer(self, conn: TConn) -> bool:
        if self.buffer_budget <= 0 or self.cfg.is_ssl or conn.is_http2:
            return False
        if conn.parser is None:
            return not negotiation.prior_knowledge_allowed(self.cfg, conn.client)
        source = conn.parser.unreader.sock
        # A pipelined request already read ahead goes straight to a thread, as in stock gthread.
        return (isinstance(source, PrefetchedSocket) and not source.buffered
                and not conn.parser.unreader.buf.getbuffer().nbytes)

    # --- reading in the event loop -------------------------------------------------------------

    def _start_reading(self, conn: TConn) -> None:
        conn.sock.setblocking(False)
        state = _Prefetch(conn, time.monotonic() + DeadlineSocket.read_timeout_s, self.max_body_bytes)
        self._reading.append(state)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, state))

    def _on_readable(self, state: _Prefetch, _sock: Any) -> None:
        if state.framing.in_body and self.buffered_bytes >= self.buffer_budget and state is not self._oldest():
            self._pause(state)
            return
        try:
            data = socket.socket.recv(state.conn.sock, _RECV_BYTES)  # non-blocking, no deadline
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(state)
            return
        if not data:  # the client went away before finishing its request
            self._drop(state)
            return
        state.buf += data
        self.buffered_bytes += len(data)
        had_headers = state.framing.in_body
        verdict = state.framing.feed(state.buf)
        if verdict is Framing.NEED_MORE and not had_headers and state.framing.in_body:
            if not self._authorised(state.framing):
                verdict = Framing.HAND_OFF  # the app answers 401 at once: its body is not buffered
            elif state.framing.expects_continue:
                self._send_continue(state)
        if verdict is not Framing.NEED_MORE:
            self._hand_over(state)

    def _authorised(self, framing: RequestFraming) -> bool:
        keys = self.api_keys
        return keys is None or keys.allows(framing.path, framing.header(b"authorization"),
                                           framing.header(b"x-api-key"))

    def _send_continue(self, state: _Prefetch) -> None:
        """Answer `Expect: 100-continue` now (the client waits for it before sending its body)."""
        state.framing.remove_expect(state.buf)
        try:
            state.conn.sock.send(continue_response())
        except OSError:
            pass

    def _hand_over(self, state: _Prefetch) -> None:
        """The request is complete (or for gunicorn's parser to refuse): give it a thread."""
        self._finish_reading(state)
        conn = state.conn
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, PrefetchedSocket(conn.sock), conn.client)
        conn.parser.unreader.sock.load(state.buf)
        conn.data_ready = True
        self._held[conn] = len(state.buf)
        state.buf = bytearray()  # the finished entry may wait in the deadline queue a while
        self._dispatch(conn)

    def _finish_reading(self, state: _Prefetch) -> None:
        state.done = True
        if not state.paused:
            try:
                self.poller.unregister(state.conn.sock)
            except (KeyError, ValueError, OSError):
                pass
        self._resume()

    def _drop(self, state: _Prefetch, answer: bytes | None = None) -> None:
        self._finish_reading(state)
        self._release(len(state.buf))
        state.buf = bytearray()
        if answer is not None:
            try:
                state.conn.sock.send(answer)
            except OSError:
                pass
        self.nr_conns -= 1
        state.conn.close()

    def _oldest(self) -> _Prefetch | None:
        return next((state for state in self._reading if not state.done), None)

    def _pause(self, state: _Prefetch) -> None:
        """Over the buffer budget: leave this body unread until answered requests free room.

        The oldest request being read is never paused, so one always makes progress (a single
        body larger than the budget still arrives, and paused requests cannot wait on each other).
        """
        self.poller.unregister(state.conn.sock)
        state.paused = True
        self._paused.append(state)

    def _release(self, size: int) -> None:
        self.buffered_bytes -= size
        self._resume()

    def _resume(self) -> None:
        oldest = self._oldest() if self._paused else None
        for state in list(self._paused):
            if state.done:
                self._paused.remove(state)
            elif self.buffered_bytes < self.buffer_budget or state is oldest:
                self._paused.remove(state)
                state.paused = False
                self.poller.register(state.conn.sock, selectors.EVENT_READ, partial(self._on_readable, state))

    def murder_pending(self) -> None:
        """Also close requests not read within the deadline, with 408 (they held no thread)."""
        super().murder_pending()
        now = time.monotonic()
        while self._reading and (self._reading[0].done or self._reading[0].deadline <= now):
            state = self._reading.popleft()
            if not state.done:
                answer = BODY_TIMEOUT_RESPONSE if state.framing.in_body else TIMEOUT_RESPONSE
                self._drop(state, answer if state.buf else None)

    def finish_request(self, conn: Any, fs: Any) -> None:
        self._release(self._held.pop(conn, 0))
        source = conn.parser.unreader.sock if conn.parser is not None else None
        if (isinstance(source, PrefetchedSocket) and source.buffered and self.alive
                and not fs.cancelled() and fs.exception() is None and fs.result() is True):
            self._dispatch(conn)  # a pipelined request the loop read along with this one
            return
        super().finish_request(conn, fs)

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
