"""Hostile files against decode_image: each must get its 4xx code fast and in bounded memory.

Every hostile decode runs in a forked child under RLIMIT_AS with a wall-clock kill, so the
failures these tests guard against (an endless IFD walk, a 4 GiB tile) fail the test instead of
hanging or OOM-killing the suite.
"""

from __future__ import annotations

import io
import json
import os
import resource
import select
import signal
import struct
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from service.codecs.budget import DecodeBudget
from service.codecs.images import ImageLimits, decode_image
from service.codecs.tiff import walk_ifds
from service.errors import (
    DecodeBudgetExhausted,
    ImageTooLarge,
    InvalidImageShape,
    ServiceError,
    TooManyPages,
    UndecodableImage,
    UnsupportedCompression,
)
from tests.conftest import tiff_bytes
from tests.hostile.make_corpus import CASES, HERE, Case, build_tiff, strip_page

CPU_LIMIT_S = 1.0  # each hostile file is refused within this much CPU time
KILL_AFTER_S = 20.0  # wall-clock guard: generous, the machine is shared
MEMORY_HEADROOM_BYTES = 1024**3  # RLIMIT_AS above the child's starting size
PEAK_RSS_BUDGET_BYTES = 64 * 1024**2  # RSS growth allowed while refusing a hostile file


def _vm_size_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_bounded(call: Callable[[], object], *, kill_after_s: float = KILL_AFTER_S) -> dict[str, Any]:
    """Run `call` in a forked child with a memory cap and a kill timer; describe how it ended."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        os.close(read_end)
        report: dict[str, Any] = {}
        try:
            cap = _vm_size_bytes() + MEMORY_HEADROOM_BYTES
            resource.setrlimit(resource.RLIMIT_AS, (cap, resource.RLIM_INFINITY))
            rss_before = _rss_bytes()
            cpu_before = time.process_time()
            try:
                call()
                report = {"outcome": "ok"}
            except ServiceError as err:
                report = {"outcome": "error", "status": err.status_code, "code": err.code,
                          "message": err.message}
            except BaseException as err:  # noqa: BLE001 - anything else is the bug under test
                report = {"outcome": "crash", "error": repr(err)[:500]}
            report["cpu_s"] = time.process_time() - cpu_before
            peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
            report["peak_rss_growth_bytes"] = peak_rss - rss_before
            os.write(write_end, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], kill_after_s)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            return {"outcome": "hang", "cpu_s": kill_after_s}
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
        if not chunks:
            return {"outcome": "died"}
        return json.loads(b"".join(chunks))
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)


def _assert_refused(result: dict[str, Any], code: str | None) -> None:
    assert result["outcome"] == "error", result
    assert 400 <= result["status"] < 500, result
    if code is not None:
        assert result["code"] == code, result
    # Refused from the headers, not rescued by RLIMIT_AS turning a huge allocation into MemoryError.
    assert "more memory than this worker allows" not in result["message"], result
    assert result["cpu_s"] < CPU_LIMIT_S, result
    assert result["peak_rss_growth_bytes"] < PEAK_RSS_BUDGET_BYTES, result


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_case_gets_its_code_fast_and_small(case: Case) -> None:
    data = case.build()
    _assert_refused(run_bounded(lambda: decode_image(data, page=case.page)), case.code)


_KNOWN = {case.name: case for case in CASES}
_FILES = sorted(path for path in HERE.iterdir() if path.suffix in {".tif", ".png", ".jpg", ".bin"})


@pytest.mark.parametrize("path", _FILES, ids=[path.name for path in _FILES])
def test_every_committed_hostile_file_is_refused(path: Path) -> None:
    """Files made by make_corpus.py, and fuzzer finds (fuzz-*.bin): any 4xx, fast and small."""
    known = _KNOWN.get(path.name)
    data = path.read_bytes()
    page = known.page if known else 0
    _assert_refused(run_bounded(lambda: decode_image(data, page=page)), known.code if known else None)


def test_ifd_walk_stops_at_the_page_cap() -> None:
    data = next(case for case in CASES if case.name == "too_many_pages.tif").build()
    with pytest.raises(TooManyPages):
        walk_ifds(data, 10_000)
    assert len(walk_ifds(data, 20_000)) == 10_001


def test_ifd_walk_matches_tifffile_on_real_files(rng: np.random.Generator) -> None:
    stack = rng.integers(0, 255, size=(5, 16, 16), dtype=np.uint8)
    for data in (tiff_bytes(stack), tiff_bytes(stack, bigtiff=True), tiff_bytes(stack, byteorder=">")):
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            assert walk_ifds(data, 100) == [page.offset for page in tif.pages]


def test_tiled_tiff_with_ordinary_tiles_still_decodes(rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 4096, size=(300, 200), dtype=np.uint16)
    for compression in ("zlib", "lzw", "zstd", None):
        data = tiff_bytes(pixels, tile=(256, 256), compression=compression)
        np.testing.assert_array_equal(decode_image(data), pixels)
    small = rng.integers(0, 255, size=(10, 12), dtype=np.uint8)  # one 256x256 tile: allowed slack
    np.testing.assert_array_equal(decode_image(tiff_bytes(small, tile=(256, 256))), small)


def test_jpeg_compressed_tiff_decodes(rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 255, size=(64, 80, 3), dtype=np.uint8)
    decoded = decode_image(tiff_bytes(pixels, photometric="rgb", compression="jpeg", tile=(32, 32)))
    assert decoded.shape == (64, 80, 3)


def test_unsupported_compression_is_415(rng: np.random.Generator) -> None:
    data = tiff_bytes(rng.integers(0, 255, size=(16, 16), dtype=np.uint8), compression="lzma")
    with pytest.raises(UnsupportedCompression) as raised:
        decode_image(data)
    assert raised.value.status_code == 415 and raised.value.code == "unsupported_compression"


def test_decoded_bytes_limit_refuses_before_decoding() -> None:
    png = io.BytesIO()
    Image.fromarray(np.zeros((100, 100), np.uint16)).save(png, format="PNG")
    assert decode_image(png.getvalue()).shape == (100, 100)
    with pytest.raises(ImageTooLarge, match="bytes"):
        decode_image(png.getvalue(), limits=ImageLimits(max_decoded_bytes=30_000))


def test_truncated_png_is_never_loaded_partially() -> None:
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64), np.uint8)).save(png, format="PNG")
    with pytest.raises(UndecodableImage):
        decode_image(png.getvalue()[:-200])


def test_apng_decodes_its_first_frame_only() -> None:
    frames = [Image.new("L", (32, 32), color) for color in (10, 200)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:])
    pixels = decode_image(buffer.getvalue())
    assert pixels.shape == (32, 32) and int(pixels[0, 0]) == 10


def test_mpo_decodes_its_first_picture_only() -> None:
    pictures = [Image.new("RGB", (32, 24), (255, 0, 0)), Image.new("RGB", (64, 48), (0, 0, 255))]
    buffer = io.BytesIO()
    pictures[0].save(buffer, format="MPO", save_all=True, append_images=pictures[1:])
    assert decode_image(buffer.getvalue()).shape == (24, 32, 3)


def test_negative_page_is_422() -> None:
    with pytest.raises(InvalidImageShape):
        decode_image(tiff_bytes(np.zeros((16, 16), np.uint8)), page=-1)


# --- DecodeBudget ---------------------------------------------------------------------------


def test_budget_reserves_and_releases() -> None:
    budget = DecodeBudget(100)
    with budget.reserve(60, timeout_s=0):
        assert budget.in_use_bytes == 60
        with budget.reserve(40, timeout_s=0):
            assert budget.in_use_bytes == 100
    assert budget.in_use_bytes == 0


def test_budget_times_out_with_503_and_retry_after() -> None:
    budget = DecodeBudget(100)
    with budget.reserve(80, timeout_s=0):
        started = time.monotonic()
        with pytest.raises(DecodeBudgetExhausted) as raised, budget.reserve(40, timeout_s=0.05):
            pass
        assert time.monotonic() - started < 2
    assert raised.value.status_code == 503 and raised.value.retry_after_s == 1
    assert budget.in_use_bytes == 0


def test_budget_waiter_proceeds_when_bytes_are_released() -> None:
    budget = DecodeBudget(100)
    held, release, got_in = threading.Event(), threading.Event(), threading.Event()

    def holder() -> None:
        with budget.reserve(100, timeout_s=0):
            held.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)

    def waiter_body() -> None:
        with budget.reserve(50, timeout_s=5):
            got_in.set()

    waiter = threading.Thread(target=waiter_body)
    waiter.start()
    assert not got_in.wait(0.05)
    release.set()
    assert got_in.wait(5)
    thread.join(5)
    waiter.join(5)


def test_budget_refuses_more_than_it_holds_at_once() -> None:
    with pytest.raises(ImageTooLarge), DecodeBudget(100).reserve(101, timeout_s=10):
        pass


def test_decode_image_reserves_the_predicted_size(rng: np.random.Generator) -> None:
    budget = DecodeBudget(10 * 1024**2)
    data = tiff_bytes(rng.integers(0, 255, size=(64, 64), dtype=np.uint8))
    with budget.reserve(10 * 1024**2 - 100, timeout_s=0), pytest.raises(DecodeBudgetExhausted):
        decode_image(data, budget=budget, budget_timeout_s=0.01)
    assert decode_image(data, budget=budget).shape == (64, 64)
    assert budget.in_use_bytes == 0


# --- property test: mutated valid files only ever raise the service's own 4xx errors ---------


def _seeds() -> list[bytes]:
    rng = np.random.default_rng(7)
    gray = rng.integers(0, 4096, size=(24, 20), dtype=np.uint16)
    png = io.BytesIO()
    Image.fromarray(gray.astype(np.uint8)).save(png, format="PNG")
    return [
        tiff_bytes(gray), tiff_bytes(gray, compression="zlib"),
        tiff_bytes(gray, tile=(16, 16), compression="lzw"),
        tiff_bytes(np.stack([gray, gray]), bigtiff=True), png.getvalue(),
    ]


_SEEDS = _seeds()
_FUZZ_LIMITS = ImageLimits(max_pixels=1_000_000, max_decoded_bytes=16 * 1024**2, max_tiff_pages=64)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["byte", "word", "cut", "insert"]))
        if kind == "byte":
            data[at] = draw(st.integers(0, 255))
        elif kind == "word" and at + 4 <= len(data):
            word = draw(st.sampled_from([0, 1, 8, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, len(data)]))
            data[at:at + 4] = struct.pack("<I", word)
        elif kind == "cut":
            del data[at:]
            if not data:
                break
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@settings(max_examples=2500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_mutated(), page=st.integers(0, 2))
def test_mutated_images_raise_only_service_4xx(data: bytes, page: int) -> None:
    try:
        decode_image(data, page=page, limits=_FUZZ_LIMITS)
    except ServiceError as err:
        assert 400 <= err.status_code < 500, err


def test_extra_strip_offsets_are_not_decoded() -> None:
    """tifffile keeps only the strips the image needs: 2,000 offsets at one 1 MB zlib stream
    decode one strip, so 'strip bombs' are bounded by the image size (and checked anyway)."""
    strip = zlib.compress(bytes(1024 * 1024), 9)
    page = strip_page(1024, 1024, [8] * 2000, [len(strip)] * 2000, compression=8)
    result = run_bounded(lambda: decode_image(build_tiff([page], strip)))
    assert result["outcome"] == "ok" and result["cpu_s"] < CPU_LIMIT_S, result


def test_pillow_bomb_error_above_our_limits_is_still_413() -> None:
    """Limits set above Pillow's own guard (2 x Image.MAX_IMAGE_PIXELS) meet Pillow's error first."""
    side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 1_000
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + header
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    loose = ImageLimits(max_pixels=10**12, max_decoded_bytes=10**13)
    with pytest.raises(ImageTooLarge):
        decode_image(data + b"\x00\x00\x00\x00IEND\xaeB`\x82", limits=loose)


def test_progressive_jpeg_counts_its_coefficient_buffer() -> None:
    """A progressive 512x512 gray JPEG costs 2 x 256 KiB of pixels plus 512 KiB of coefficients."""
    buffer = io.BytesIO()
    Image.new("L", (512, 512)).save(buffer, format="JPEG", progressive=True)
    baseline = io.BytesIO()
    Image.new("L", (512, 512)).save(baseline, format="JPEG")
    limits = ImageLimits(max_decoded_bytes=2 * 512 * 512 + 1)
    assert decode_image(baseline.getvalue(), limits=limits).shape == (512, 512)
    with pytest.raises(ImageTooLarge):
        decode_image(buffer.getvalue(), limits=limits)
