"""Whole requests read by the worker's event loop before a thread is given to them.

Stock gthread hands a connection to a request thread as soon as its first bytes arrive; the
thread then reads headers and body with blocking reads. A client that sends a few bytes and
stops holds that thread until the read deadline: 16 such uploads take every thread of a worker
and normal requests queue behind them (the `make harden` stalled row: p99 154 ms -> 4.8 s).
Buffering proxies (nginx's `proxy_request_buffering`) avoid this by reading the whole request
before passing it on; `service.gunicorn_worker` does the same inside the worker: the event loop
reads without blocking, and `RequestFraming` says when the bytes read so far form a complete
HTTP/1.1 request (headers, then a `Content-Length` body or chunked body to its last chunk).

What the framing does not understand (malformed headers, both length headers, a body larger
than the limit) is handed to gunicorn's own parser as received, which answers 400/413 as before.
`PrefetchedSocket` replays the buffered bytes to that parser before reading the socket again.
"""

from __future__ import annotations

import enum
import socket
from typing import Any

_HEADER_END = b"\r\n\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Framing(enum.Enum):
    NEED_MORE = "need_more"
    COMPLETE = "complete"
    HAND_OFF = "hand_off"  # let gunicorn's parser answer it (malformed, too large, ...)


class _Phase(enum.Enum):
    HEADERS = 0
    LENGTH = 1
    CHUNK_SIZE = 2
    CHUNK_DATA = 3
    TRAILERS = 4


class RequestFraming:
    """Incremental HTTP/1.1 request framing over a growing buffer (one request per instance).

    Called after every read with the whole buffer; it resumes where it stopped, so a body that
    arrives in many small pieces costs linear time. `body_bytes` counts the decoded body.
    """

    def __init__(self, max_header_bytes: int, max_body_bytes: int) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.phase = _Phase.HEADERS
        self.scanned = 0  # bytes of the buffer already examined
        self.header_end = 0
        self.body_bytes = 0
        self.chunk_left = 0
        self.expects_continue = False
        self.target: list[bytes] = []  # the request target, once the headers are in
        self.fields: dict[bytes, bytes] | None = None
        self._request_end = 0

    @property
    def path(self) -> str:
        """The request's path (no query), once the headers are in."""
        return self.target[0].split(b"?", 1)[0].decode("latin-1") if self.target else ""

    def header(self, name: bytes) -> str | None:
        value = (self.fields or {}).get(name)
        return value.decode("latin-1") if value is not None else None

    @property
    def in_body(self) -> bool:
        return self.phase is not _Phase.HEADERS

    def remove_expect(self, buf: bytearray) -> None:
        """Take `Expect: 100-continue` out of the buffered headers once the loop has answered it
        (gunicorn would send a second interim answer, and refuses the header blanked: 417)."""
        head = bytes(buf[:self.header_end]).lower()
        start = head.find(b"\r\nexpect:")
        if start < 0:
            return
        removed = head.find(b"\r\n", start + 2) - start
        del buf[start:start + removed]
        self.header_end -= removed
        self.scanned -= removed
        self._request_end -= removed

    def feed(self, buf: bytearray) -> Framing:
        """Advance over what `buf` holds now; say whether the request is complete."""
        if self.phase is _Phase.HEADERS:
            verdict = self._headers(buf)
            if verdict is not None:
                return verdict
        if self.phase is _Phase.LENGTH:
            return Framing.COMPLETE if len(buf) >= self._request_end else Framing.NEED_MORE
        return self._chunks(buf)

    def _headers(self, buf: bytearray) -> Framing | None:
        end = buf.find(_HEADER_END, max(0, self.scanned - 3))
        if end < 0:
            self.scanned = len(buf)
            return Framing.HAND_OFF if len(buf) > self.max_header_bytes else Framing.NEED_MORE
        self.header_end = end + len(_HEADER_END)
        head = bytes(buf[:end])
        self.target = head.split(b"\r\n", 1)[0].split(b" ")[1:2]
        self.fields = _fields(head)
        length, chunked, self.expects_continue = _body_framing(self.fields)
        if length == -1 or (chunked and length is not None):
            return Framing.HAND_OFF  # malformed or ambiguous: gunicorn refuses it
        if chunked:
            self.phase, self.scanned = _Phase.CHUNK_SIZE, self.header_end
            return None
        if length is not None and length > self.max_body_bytes:
            return Framing.HAND_OFF  # the app answers 413 without reading the body
        self.phase, self.body_bytes = _Phase.LENGTH, length or 0
        self._request_end = self.header_end + self.body_bytes
        return None

    def _chunks(self, buf: bytearray) -> Framing:
        pos = self.scanned
        while True:
            if self.phase is _Phase.CHUNK_DATA:
                if len(buf) < pos + self.chunk_left + 2:
                    break
                pos += self.chunk_left + 2
                self.phase = _Phase.CHUNK_SIZE
                continue
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                if len(buf) - pos > 1024:
                    return Framing.HAND_OFF  # a chunk-size or trailer line that long is hostile
                break
            line = bytes(buf[pos:line_end])
            pos = line_end + 2
            if self.phase is _Phase.TRAILERS:
                if not line:
                    self.scanned = pos
                    return Framing.COMPLETE
                continue
            size = _chunk_size(line)
            if size is None:
                return Framing.HAND_OFF
            self.body_bytes += size
            if self.body_bytes > self.max_body_bytes:
                return Framing.HAND_OFF  # the app reads up to the limit and answers 413
            if size == 0:
                self.phase = _Phase.TRAILERS
            else:
                self.phase, self.chunk_left = _Phase.CHUNK_DATA, size
        self.scanned = pos
        return Framing.NEED_MORE


def _fields(head: bytes) -> dict[bytes, bytes] | None:
    """Header fields by lower-case name (repeated ones joined by ", "); None if malformed."""
    fields: dict[bytes, bytes] = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            return None
        key = name.strip().lower()
        fields[key] = fields[key] + b", " + value.strip() if key in fields else value.strip()
    return fields


def _body_framing(fields: dict[bytes, bytes] | None) -> tuple[int | None, bool, bool]:
    """(Content-Length or None, -1 if malformed; chunked?; Expect: 100-continue?)."""
    if fields is None:
        return -1, False, False
    length: int | None = None
    declared = fields.get(b"content-length")
    if declared is not None:
        values = {value.strip() for value in declared.split(b",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            return -1, False, False
        length = int(values.pop())
    coding = fields.get(b"transfer-encoding")
    chunked = coding is not None and coding.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
    if coding is not None and not chunked:
        return -1, False, False
    expects = fields.get(b"expect", b"").lower() == b"100-continue"
    return length, chunked, expects


def _chunk_size(line: bytes) -> int | None:
    digits = line.split(b";", 1)[0].strip()
    if not digits or len(digits) > 16:
        return None
    try:
        return int(digits, 16)
    except ValueError:
        return None


def continue_response() -> bytes:
    """The interim answer a client sending `Expect: 100-continue` waits for before its body."""
    return _CONTINUE


class PrefetchedSocket:
    """What gunicorn's parser reads from: the bytes the event loop buffered, then the socket.

    Served in slices of at most the size asked for, so a 64 MiB body is copied once, not once
    per read. Only `recv` is needed (gunicorn's SocketUnreader); the rest is the socket's.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = memoryview(b"")
        self._offset = 0

    def load(self, data: bytearray) -> None:
        """Replay `data` (left over bytes first) before reading the socket again."""
        rest = self._buffer[self._offset:]
        # The event loop hands `data` over and never touches it again: no copy needed.
        self._buffer = memoryview(bytes(rest) + data) if len(rest) else memoryview(data)
        self._offset = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer) - self._offset

    def recv(self, size: int, flags: int = 0) -> bytes:
        if self._offset < len(self._buffer):
            piece = bytes(self._buffer[self._offset:self._offset + size])
            self._offset += len(piece)
            if self._offset == len(self._buffer):
                self._buffer, self._offset = memoryview(b""), 0
            return piece
        return self.sock.recv(size, flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)
