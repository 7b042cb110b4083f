"""Arrays to PNG bytes with the stdlib only (zlib), so `Client.predict` takes arrays without tifffile."""

from __future__ import annotations

import struct
import zlib
from typing import Any

_COLOR_TYPES = {1: 0, 3: 2, 4: 6}  # gray, RGB, RGBA


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(array: Any) -> bytes:
    """A 2-D (gray) or 3-D (H, W, 1|3|4) uint8/uint16 array as a lossless PNG (16-bit kept)."""
    shape = tuple(array.shape)
    if len(shape) == 2:
        height, width, channels = shape[0], shape[1], 1
    elif len(shape) == 3 and shape[2] in _COLOR_TYPES:
        height, width, channels = shape
    else:
        raise ValueError(f"array of shape {shape} is not an image (H, W) or (H, W, 1|3|4)")
    kind = str(array.dtype)
    if kind not in ("uint8", "uint16"):
        raise ValueError(f"array dtype {kind} is not uint8 or uint16; convert it first")
    depth = 8 if kind == "uint8" else 16
    raw = array.astype(">u2" if depth == 16 else "u1").tobytes()  # PNG is big-endian
    stride = width * channels * depth // 8
    rows = b"".join(b"\x00" + raw[i * stride:(i + 1) * stride] for i in range(height))
    header = struct.pack(">IIBBBBB", width, height, depth, _COLOR_TYPES[channels], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows, 6)) + _chunk(b"IEND", b"")
