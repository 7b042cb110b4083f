"""Request bodies: distinct random 12-bit-in-uint16 images, encoded as the microscope writes them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import tifffile


def tiff_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels, photometric="minisblack")
    return buffer.getvalue()


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")  # uint16 -> mode I;16
    return buffer.getvalue()


def random_fields(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """`count` different 12-bit fields (uint16, values 0..4095) with different levels."""
    rng = np.random.default_rng(seed)
    fields = []
    for _ in range(count):
        level = int(rng.integers(0, 2048))
        base = rng.integers(0, 2048, size=(height, width), dtype=np.uint16)
        fields.append((base + level).astype(np.uint16))
    return fields


def write_payloads(directory: Path, count: int, height: int, width: int, fmt: str = "tiff",
                   seed: int = 0) -> list[Path]:
    """Encode `count` distinct images into `directory`; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    encode = tiff_bytes if fmt == "tiff" else png_bytes
    paths = []
    for index, pixels in enumerate(random_fields(count, height, width, seed)):
        path = directory / f"field{index}.{'tif' if fmt == 'tiff' else 'png'}"
        path.write_bytes(encode(pixels))
        paths.append(path)
    return paths
