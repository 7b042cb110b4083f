"""Packing images into requests, backoff honouring Retry-After, per-image error isolation.

Timing and status sequences use the loopback stub in tests/client/stub.py (the real service
cannot be made to answer an exact sequence of 503s); tests/integration/test_client_plate.py
drives the real service under Gunicorn.
"""

from __future__ import annotations

import io
import json
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import numpy as np
import pytest
from cpe_client.client import ApiError, Client, Upload, limits_from_status
from cpe_client.encode import png_bytes
from cpe_client.packing import PART_OVERHEAD_BYTES, Limits, pack
from cpe_client.retry import RetryPolicy, parse_retry_after
from PIL import Image

from tests.client.stub import StubServer, error, ok


def test_pack_caps_images_and_bytes_and_keeps_order() -> None:
    items = list(range(10))
    assert pack(items, [1] * 10, max_images=4, max_bytes=10**9) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    size = 1000
    budget = 3 * (size + PART_OVERHEAD_BYTES)  # exactly three images fit
    assert pack(items[:7], [size] * 7, max_images=64, max_bytes=budget) == [[0, 1, 2], [3, 4, 5], [6]]
    # An image larger than the budget travels alone (the server answers 413 for it).
    assert pack([0, 1, 2], [10, 10**9, 10], max_images=64, max_bytes=10**6) == [[0], [1], [2]]
    assert pack([], [], 4, 100) == []
    with pytest.raises(ValueError):
        pack([1], [1], 0, 100)


def test_limits_from_status() -> None:
    assert limits_from_status({}) == Limits(64 * 1024 * 1024, 64)
    with StubServer() as stub:  # a server without /status: the service's defaults
        stub.status_body = {"error": {"code": "not_found", "message": "no"}}
        stub.status_code = 404
        assert Client(stub.url).limits() == Limits()
    assert Limits(100, 1).body_budget_bytes == 80  # 80% of the body limit
    published = {"limits": {"max_body_bytes": 1000, "max_images_per_request": 32},
                 "models": {"m": {"versions": [{"batching": {"max_queue_size": 16}}, {"batching": None}]}}}
    assert limits_from_status(published) == Limits(1000, 16)  # a bigger request would always get 503


def test_backoff_grows_is_capped_and_never_undercuts_retry_after() -> None:
    policy = RetryPolicy(base_s=0.5, max_s=8, jitter=0)
    assert [policy.delay_s(a) for a in range(6)] == [0.5, 1, 2, 4, 8, 8]
    assert policy.delay_s(0, retry_after_s=3) == 3
    assert policy.delay_s(5, retry_after_s=3) == 8
    assert policy.delay_s(0, retry_after_s=3600) == 8  # a silly Retry-After is capped too
    jittered = RetryPolicy(base_s=1, jitter=0.25)
    delays = [jittered.delay_s(0, rng=random.Random(seed)) for seed in range(50)]
    assert 0.75 <= min(delays) < max(delays) <= 1.25


def test_retry_after_forms() -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None


def test_503_is_retried_after_retry_after_then_succeeds() -> None:
    answers = iter([error(503, "queue_full", "1"), error(504, "timeout"), None])
    with StubServer(respond=lambda names: next(answers) or ok(names)) as stub:
        client = Client(stub.url, retry=RetryPolicy(base_s=0.05, jitter=0))
        [prediction] = client.post_images([Upload("a.tif", b"abc", {"id": "a.tif"})])
    assert prediction.id == "a.tif" and prediction.p_infected == 0.9 and prediction.qc_status == ""
    times = [t for t, _ in stub.posts]
    assert len(times) == 3 and client.retries == 2
    assert times[1] - times[0] >= 0.95  # waited for Retry-After: 1, not the 0.05 s backoff
    assert times[2] - times[1] < 0.9     # 504 without Retry-After: the short backoff (0.1 s)


def test_retries_give_up_and_4xx_is_not_retried() -> None:
    with StubServer(respond=lambda names: error(503, "queue_full", "0")) as stub:
        client = Client(stub.url, retry=RetryPolicy(max_attempts=3, base_s=0.01))
        with pytest.raises(ApiError) as caught:
            client.post_images([Upload("a.tif", b"abc")])
    assert caught.value.code == "queue_full" and len(stub.posts) == 3
    with StubServer(respond=lambda names: error(400, "undecodable_image")) as stub, \
            pytest.raises(ApiError, match="undecodable_image"):
        Client(stub.url).post_images([Upload("a.tif", b"abc")])
    assert len(stub.posts) == 1


def test_connection_errors_are_retried() -> None:
    calls = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] < 3:
            raise httpx.ConnectError("refused")
        return httpx.Response(200, json=ok(["a.tif"])[2])

    client = Client("http://server", retry=RetryPolicy(base_s=0.01), transport=httpx.MockTransport(flaky))
    assert client.post_images([Upload("a.tif", b"abc")])[0].label == "infected"
    assert calls["n"] == 3


def test_request_carries_metadata_in_order_and_count_is_checked() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=ok(["only-one"])[2])

    client = Client("http://server", api_key="k3y", transport=httpx.MockTransport(answer))
    uploads = [Upload("a.tif", b"A", {"id": "a.tif", "well": "B07"}), Upload("b.png", b"B", {"id": "b.png"})]
    with pytest.raises(ApiError, match="count_mismatch"):
        client.post_images(uploads)
    body = seen[0].read()
    assert seen[0].headers["Authorization"] == "Bearer k3y"
    assert body.count(b'name="image"') == 2 and body.index(b'filename="a.tif"') < body.index(b'filename="b.png"')
    metadata = body.split(b'name="metadata"\r\n\r\n')[1].split(b"\r\n--")[0]
    assert json.loads(metadata) == [{"id": "a.tif", "well": "B07"}, {"id": "b.png"}]


def test_predict_accepts_bytes_and_arrays() -> None:
    png = png_bytes(np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    assert png.startswith(b"\x89PNG")
    decoded = np.asarray(Image.open(io.BytesIO(png)))
    assert decoded.tolist() == (np.arange(12).reshape(3, 4) * 5000).tolist()  # lossless 16-bit
    with StubServer() as stub:
        client = Client(stub.url)
        answers = client.predict([b"raw", np.zeros((8, 8, 3), np.uint8)])
    assert [a.id for a in answers] == ["image-0", "array-1.png"]
    with pytest.raises(ValueError):
        png_bytes(np.zeros((2, 2), np.float32))
