"""Hostile image files for the decoder hardening tests, built byte by byte.

`python -m tests.hostile.make_corpus` (re)writes the files of 100 KB or less next to this
script; the tests build every case in memory from `CASES`, so the larger ones (the 124 KB
PNG bomb) need no committed file. Each case names the error code decode_image must answer.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
MAX_COMMITTED_BYTES = 100 * 1024

# TIFF tag numbers and field types used below.
WIDTH, LENGTH, BITS, COMPRESSION, PHOTOMETRIC = 256, 257, 258, 259, 262
STRIP_OFFSETS, SAMPLES, ROWS_PER_STRIP, STRIP_COUNTS = 273, 277, 278, 279
TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS, TILE_COUNTS = 322, 323, 324, 325
SHORT, LONG = 3, 4
Tags = dict[int, tuple[int, list[int]]]


@dataclass(frozen=True)
class Case:
    """One hostile input and the error code it must get."""

    name: str
    build: Callable[[], bytes]
    code: str
    page: int = 0


def build_tiff(pages: list[Tags], payload: bytes = b"", loop_to: int | None = None) -> bytes:
    """Little-endian classic TIFF: header, payload at offset 8, then the IFDs in order.

    Pixel offsets in tags are absolute, so payload bytes start at 8. `loop_to` points the last
    IFD's next-offset back at that page instead of 0.
    """
    start = 8 + len(payload) + len(payload) % 2
    sizes = []
    for tags in pages:
        extra = sum(len(values) * (2 if kind == SHORT else 4) for kind, values in tags.values()
                    if len(values) * (2 if kind == SHORT else 4) > 4)
        sizes.append(2 + 12 * len(tags) + 4 + extra)
    offsets = []
    at = start
    for size in sizes:
        offsets.append(at)
        at += size + size % 2
    out = bytearray(b"II*\x00" + struct.pack("<I", offsets[0] if pages else 0))
    out += payload + b"\x00" * (start - 8 - len(payload))
    for index, tags in enumerate(pages):
        out += b"\x00" * (offsets[index] - len(out))
        overflow_at = offsets[index] + 2 + 12 * len(tags) + 4
        overflow = bytearray()
        out += struct.pack("<H", len(tags))
        for tag in sorted(tags):
            kind, values = tags[tag]
            packed = struct.pack(f"<{len(values)}{'H' if kind == SHORT else 'I'}", *values)
            if len(packed) <= 4:
                field = packed.ljust(4, b"\x00")
            else:
                field = struct.pack("<I", overflow_at + len(overflow))
                overflow += packed
            out += struct.pack("<HHI", tag, kind, len(values)) + field
        if index + 1 < len(pages):
            following = offsets[index + 1]
        else:
            following = offsets[loop_to] if loop_to is not None else 0
        out += struct.pack("<I", following) + overflow
    return bytes(out)


def strip_page(width: int, length: int, offsets: list[int], counts: list[int], *,
               compression: int = 1, rows: int | None = None, bits: int = 8) -> Tags:
    """Tags of a gray image stored in strips."""
    return {
        WIDTH: (LONG, [width]), LENGTH: (LONG, [length]), BITS: (SHORT, [bits]),
        COMPRESSION: (SHORT, [compression]), PHOTOMETRIC: (SHORT, [1]),
        STRIP_OFFSETS: (LONG, offsets), SAMPLES: (SHORT, [1]),
        ROWS_PER_STRIP: (LONG, [rows if rows is not None else length]), STRIP_COUNTS: (LONG, counts),
    }


def tile_page(width: int, length: int, tile: int, offsets: list[int], counts: list[int], *,
              compression: int) -> Tags:
    """Tags of a gray image stored in square tiles."""
    return {
        WIDTH: (LONG, [width]), LENGTH: (LONG, [length]), BITS: (SHORT, [8]),
        COMPRESSION: (SHORT, [compression]), PHOTOMETRIC: (SHORT, [1]), SAMPLES: (SHORT, [1]),
        TILE_WIDTH: (LONG, [tile]), TILE_LENGTH: (LONG, [tile]),
        TILE_OFFSETS: (LONG, offsets), TILE_COUNTS: (LONG, counts),
    }


def ifd_cycle() -> bytes:
    """150 valid pages whose chain loops back to page 120: past tifffile's 100-page check."""
    pages = [strip_page(16, 16, [8], [256]) for _ in range(150)]
    return build_tiff(pages, bytes(256), loop_to=120)


def ifd_self_loop() -> bytes:
    """One page whose next-IFD offset is itself."""
    return build_tiff([strip_page(16, 16, [8], [256])], bytes(256), loop_to=0)


def too_many_pages() -> bytes:
    """One real page followed by 10,000 empty IFDs (6 bytes each): over max_tiff_pages."""
    return build_tiff([strip_page(16, 16, [8], [256])] + [{}] * 10_000, bytes(256))


def tile_bomb() -> bytes:
    """A 16x16 image with one 4096x4096 zlib tile: 16 MB decoded from 16 KB."""
    tile = zlib.compress(bytes(4096 * 4096), 9)
    return build_tiff([tile_page(16, 16, 4096, [8], [len(tile)], compression=8)], tile)


def jpeg_declaring(height: int, width: int) -> bytes:
    """A 16x16 JPEG whose frame header (SOF0) is patched to declare height x width."""
    buffer = io.BytesIO()
    Image.new("L", (16, 16)).save(buffer, format="JPEG")
    jpeg = bytearray(buffer.getvalue())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


def tile_bomb_declared() -> bytes:
    """A 16x16 image declaring one 65536x65536 tile: tifffile would allocate 4 GiB up front."""
    tile = zlib.compress(bytes(4096), 9)
    return build_tiff([tile_page(16, 16, 65536, [8], [len(tile)], compression=8)], tile)


def jpeg_tile_bomb() -> bytes:
    """A 16x16 JPEG-compressed tile whose own frame header declares 30000x30000."""
    jpeg = jpeg_declaring(30000, 30000)
    return build_tiff([tile_page(16, 16, 16, [8], [len(jpeg)], compression=7)], jpeg)


def jpeg_scan_bomb() -> bytes:
    """A blank 2000x2000 progressive JPEG followed by 8,000 empty 10-byte scans (CPU, not memory)."""
    buffer = io.BytesIO()
    Image.new("L", (2000, 2000)).save(buffer, format="JPEG", progressive=True)
    jpeg = buffer.getvalue()
    sos = jpeg.rindex(b"\xff\xda")
    header = jpeg[sos:sos + 2 + struct.unpack(">H", jpeg[sos + 2:sos + 4])[0]]
    return jpeg[:-2] + header * 8000 + b"\xff\xd9"


def huge_dims_tiff() -> bytes:
    """100000x100000 declared in 300 bytes."""
    return build_tiff([strip_page(100_000, 100_000, [8], [256])], bytes(256))


def unsupported_compression(code: int) -> Callable[[], bytes]:
    def build() -> bytes:
        return build_tiff([strip_page(16, 16, [8], [256], compression=code)], bytes(256))
    build.__doc__ = f"A 16x16 TIFF with Compression={code}."
    return build


def valid_tiff() -> bytes:
    return build_tiff([strip_page(16, 16, [8], [256])], bytes(range(256)))


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def png_bomb_16bit() -> bytes:
    """124 KB of PNG that inflates to 8000x8000 16-bit (64 M values, 256 MB decoded)."""
    return png(np.zeros((8000, 8000), np.uint16))


def png_huge_header() -> bytes:
    """A PNG whose IHDR declares 100000x100000 and holds no pixel data."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + b"\x00\x00\x00\x00IEND\xaeB`\x82")


def jpeg_huge_header() -> bytes:
    """A small JPEG whose frame header is patched to 65000x65000."""
    return jpeg_declaring(65000, 65000)


def truncated(build: Callable[[], bytes], keep: float) -> Callable[[], bytes]:
    def cut() -> bytes:
        data = build()
        return data[: int(len(data) * keep)]
    cut.__doc__ = f"The first {keep:.0%} of {build.__name__}."
    return cut


def gray_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def gray_png() -> bytes:
    return png(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8))


CASES: tuple[Case, ...] = (
    Case("ifd_cycle.tif", ifd_cycle, "undecodable_image"),
    Case("ifd_self_loop.tif", ifd_self_loop, "undecodable_image"),
    Case("too_many_pages.tif", too_many_pages, "too_many_pages"),
    Case("tile_bomb.tif", tile_bomb, "image_too_large"),
    Case("tile_bomb_declared.tif", tile_bomb_declared, "image_too_large"),
    Case("jpeg_tile_bomb.tif", jpeg_tile_bomb, "image_too_large"),
    Case("huge_dims.tif", huge_dims_tiff, "image_too_large"),
    Case("jpeg2000_compression.tif", unsupported_compression(34712), "unsupported_compression"),
    Case("old_jpeg_compression.tif", unsupported_compression(6), "unsupported_compression"),
    Case("lzma_compression.tif", unsupported_compression(34925), "unsupported_compression"),
    Case("missing_page.tif", valid_tiff, "invalid_image_shape", page=3),
    Case("truncated.tif", truncated(tile_bomb, 0.01), "undecodable_image"),
    Case("png_bomb_16bit.png", png_bomb_16bit, "image_too_large"),
    Case("huge_dims.png", png_huge_header, "image_too_large"),
    Case("truncated.png", truncated(gray_png, 0.5), "undecodable_image"),
    Case("huge_dims.jpg", jpeg_huge_header, "image_too_large"),
    Case("truncated.jpg", truncated(gray_jpeg, 0.5), "undecodable_image"),
    Case("jpeg_scan_bomb.jpg", jpeg_scan_bomb, "image_too_large"),
    Case("empty.bin", lambda: b"", "undecodable_image"),
    Case("not_an_image.bin", lambda: b"GIF89a" + bytes(64), "undecodable_image"),
)


def main() -> None:
    """Write every case of 100 KB or less into tests/hostile/."""
    for case in CASES:
        data = case.build()
        if len(data) <= MAX_COMMITTED_BYTES:
            (HERE / case.name).write_bytes(data)
            print(f"{case.name}: {len(data)} bytes -> {case.code}")
        else:
            print(f"{case.name}: {len(data)} bytes, built in memory by the tests only")


if __name__ == "__main__":
    main()
