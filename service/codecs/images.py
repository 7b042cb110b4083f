"""Encoded image bytes -> pixel arrays: PNG, JPEG and 8/16-bit, multi-page and OME-TIFF.

The format is sniffed from the bytes (the declared content type only gates the request), and
every cost is bounded from the headers before anything is decoded (pixels, decoded bytes,
TIFF pages, tiles and compression; see limits.py, tiff.py, raster.py), so a hostile file costs
a header parse, not gigabytes of memory or a spinning worker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
from numpy.typing import NDArray

from service.codecs.budget import DecodeBudget
from service.codecs.limits import ImageLimits
from service.codecs.raster import decode_raster
from service.codecs.tiff import decode_tiff
from service.errors import InvalidImageShape, UndecodableImage

__all__ = ["DecodeBudget", "ImageLimits", "decode_image", "sniff_format"]


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF


def sniff_format(data: bytes) -> str | None:
    """Return 'png', 'jpeg' or 'tiff' from the magic bytes, or None."""
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if data[:4] in _TIFF_MAGICS:
        return "tiff"
    return None


def _reserver(
    budget: DecodeBudget | None, timeout_s: float | None
) -> Callable[[int], AbstractContextManager[object]]:
    """The decoders' hook to hold their predicted bytes while they decode."""
    if budget is None:
        return lambda nbytes: contextlib.nullcontext()
    return lambda nbytes: budget.reserve(nbytes, timeout_s)


def decode_image(
    data: bytes,
    *,
    page: int = 0,
    limits: ImageLimits | None = None,
    budget: DecodeBudget | None = None,
    budget_timeout_s: float | None = None,
) -> NDArray[np.generic]:
    """Decode one encoded image to (H, W) or (H, W, C) pixels in the file's own dtype.

    With a `budget`, the header-predicted decoded size is reserved from it for the duration of
    the decode, waiting up to `budget_timeout_s` (the budget's default when None).

    Raises:
        UndecodableImage: unknown format, corrupt bytes or a cyclic TIFF page chain (400).
        ImageTooLarge: over max_pixels or max_decoded_bytes, or oversized tiles/strips (413).
        TooManyPages: a TIFF page chain longer than max_tiff_pages (413).
        UnsupportedCompression: a TIFF compression outside the allow-list (415).
        InvalidImageShape: empty, tiny or non-2-D images, or a missing TIFF page (422).
        DecodeBudgetExhausted: the budget stayed full past the wait (503, Retry-After).
    """
    limits = limits or ImageLimits()
    if not data:
        raise UndecodableImage("image is empty (0 bytes)")
    kind = sniff_format(data)
    if kind is None:
        raise UndecodableImage("bytes are not a PNG, JPEG or TIFF image")
    if page < 0:
        raise InvalidImageShape(f"page {page} requested; pages count from 0")
    reserve = _reserver(budget, budget_timeout_s)
    if kind == "tiff":
        pixels = decode_tiff(data, page, limits, reserve)
    else:
        if page != 0:
            raise InvalidImageShape(f"page {page} requested but a {kind.upper()} has one page")
        pixels = decode_raster(data, kind, limits, reserve)
    if pixels.ndim == 3 and pixels.shape[2] not in (1, 3, 4):
        raise InvalidImageShape(f"image with {pixels.shape[2]} channels is not gray or RGB")
    if pixels.ndim not in (2, 3):
        raise InvalidImageShape(f"decoded pixels of shape {pixels.shape} are not an image")
    if pixels.dtype.kind not in "uif":
        raise UndecodableImage(f"pixel type {pixels.dtype} is not supported")
    return pixels
