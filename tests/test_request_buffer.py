"""The event loop's request framing (service.request_buffer): when bytes form a whole request."""

from __future__ import annotations

import socket

import pytest

from service.request_buffer import Framing, PrefetchedSocket, RequestFraming


def feed_all(data: bytes, step: int, max_body: int = 1 << 20) -> tuple[Framing, RequestFraming, int]:
    """Feed `data` `step` bytes at a time; the verdict and how many bytes it took."""
    framing, buf = RequestFraming(64 * 1024, max_body), bytearray()
    verdict = Framing.NEED_MORE
    for start in range(0, len(data), step):
        buf += data[start:start + step]
        verdict = framing.feed(buf)
        if verdict is not Framing.NEED_MORE:
            return verdict, framing, len(buf)
    return verdict, framing, len(buf)


HEAD = b"POST /predict?x=1 HTTP/1.1\r\nHost: t\r\nX-API-Key: k\r\n"


@pytest.mark.parametrize("step", [1, 7, 4096])
def test_a_content_length_body_is_complete_at_its_last_byte(step: int) -> None:
    request = HEAD + b"Content-Length: 300\r\n\r\n" + b"a" * 300
    verdict, framing, used = feed_all(request[:-1], step)
    assert verdict is Framing.NEED_MORE and framing.in_body
    verdict, framing, used = feed_all(request, step)
    assert verdict is Framing.COMPLETE and used == len(request)
    assert framing.path == "/predict" and framing.header(b"x-api-key") == "k"


@pytest.mark.parametrize("step", [1, 5, 4096])
def test_a_chunked_body_is_complete_after_its_trailers(step: int) -> None:
    body = b"5;ext=1\r\nhello\r\n1A\r\n" + b"z" * 26 + b"\r\n0\r\nTrailer: x\r\n\r\n"
    request = HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body
    verdict, framing, _ = feed_all(request[:-2], step)
    assert verdict is Framing.NEED_MORE
    verdict, framing, used = feed_all(request, step)
    assert verdict is Framing.COMPLETE and used == len(request) and framing.body_bytes == 31


def test_requests_without_a_body_are_complete_at_the_blank_line() -> None:
    verdict, framing, _ = feed_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", 3)
    assert verdict is Framing.COMPLETE and framing.body_bytes == 0


@pytest.mark.parametrize("request_bytes", [
    HEAD + b"Content-Length: 12x\r\n\r\n",  # not a number
    HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n",  # two lengths
    HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",  # both framings
    HEAD + b"Transfer-Encoding: gzip\r\n\r\n",  # not chunked last
    HEAD + b"no colon here\r\n\r\n",
    HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",  # not a chunk size
    HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"1" * 2000,  # a chunk-size line without end
    HEAD + b"Content-Length: 2000000\r\n\r\n",  # over the body limit: the app answers 413
    HEAD + b"Transfer-Encoding: chunked\r\n\r\n200000\r\n",  # chunked over the limit
    b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"a" * 70_000,  # headers over the limit
])
def test_what_gunicorn_must_refuse_is_handed_over_as_received(request_bytes: bytes) -> None:
    verdict, _, _ = feed_all(request_bytes, 4096)
    assert verdict is Framing.HAND_OFF


def test_expect_continue_is_seen() -> None:
    verdict, framing, _ = feed_all(HEAD + b"Expect: 100-Continue\r\nContent-Length: 4\r\n\r\n", 4096)
    assert verdict is Framing.NEED_MORE and framing.expects_continue


def test_the_prefetched_bytes_come_first_then_the_socket() -> None:
    left, right = socket.socketpair()
    with left, right:
        prefetched = PrefetchedSocket(left)
        prefetched.load(bytearray(b"abcdef"))
        right.sendall(b"XYZ")
        assert prefetched.recv(4) == b"abcd" and prefetched.buffered == 2
        prefetched.load(bytearray(b"gh"))  # left over bytes stay first
        assert prefetched.recv(100) == b"efgh" and prefetched.buffered == 0
        assert prefetched.recv(100) == b"XYZ"
        assert prefetched.fileno() == left.fileno()


def test_the_expect_header_is_removed_and_the_framing_still_ends_where_the_body_does() -> None:
    head = HEAD + b"Expect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    framing, buf = RequestFraming(64 * 1024, 1 << 20), bytearray(head)
    assert framing.feed(buf) is Framing.NEED_MORE and framing.expects_continue
    framing.remove_expect(buf)
    assert b"expect" not in bytes(buf).lower() and buf.endswith(b"Content-Length: 4\r\n\r\n")
    buf += b"abc"
    assert framing.feed(buf) is Framing.NEED_MORE
    buf += b"d"
    assert framing.feed(buf) is Framing.COMPLETE
