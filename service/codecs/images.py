"""Encoded image bytes -> pixel arrays: PNG, JPEG and 8/16-bit, multi-page and OME-TIFF.

The format is sniffed from the bytes (the declared content type only gates the request), and
the pixel count is checked from the header before anything is decoded, so a decompression bomb
costs a header parse, not gigabytes of memory.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import tifffile
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from service.errors import ImageTooLarge, InvalidImageShape, UndecodableImage

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF


@dataclass(frozen=True)
class ImageLimits:
    """Bounds every image must respect, encoded or already decoded; set from Settings.

    "Pixels" means pixel *values*: height x width x samples per pixel, so an RGB field counts
    three times a gray one of the same size, as its memory does.
    """

    max_pixels: int = 64_000_000
    min_side_px: int = 8

    def check(self, height: int, width: int, samples: int = 1) -> None:
        """Refuse an image from its dimensions alone, before (or instead of) decoding it.

        Raises:
            InvalidImageShape: an empty dimension, or a side under min_side_px (422).
            ImageTooLarge: more than max_pixels values (413).
        """
        if height <= 0 or width <= 0:
            raise InvalidImageShape(f"image has an empty dimension ({height}x{width})")
        if height * width * max(samples, 1) > self.max_pixels:
            raise ImageTooLarge(
                f"image of {width}x{height}x{samples} exceeds the limit of {self.max_pixels} values"
            )
        if min(height, width) < self.min_side_px:
            raise InvalidImageShape(
                f"image of {width}x{height} is smaller than {self.min_side_px} px on a side"
            )


def sniff_format(data: bytes) -> str | None:
    """Return 'png', 'jpeg' or 'tiff' from the magic bytes, or None."""
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if data[:4] in _TIFF_MAGICS:
        return "tiff"
    return None


def _decode_pil(data: bytes, limits: ImageLimits) -> NDArray[np.generic]:
    try:
        with warnings.catch_warnings():
            # PIL's own bomb warning is replaced by our explicit, configurable check below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            samples = len(image.getbands())
            limits.check(height, width, samples)
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UndecodableImage(f"cannot decode image: {err}") from err
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(str(err)) from err
    converted: Image.Image = image
    if image.mode in ("1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        converted = image.convert("RGBA" if "A" in image.mode or image.mode == "P" else "RGB")
    elif image.mode == "LA":
        converted = image.convert("L")
    return np.asarray(converted)


def _page_layout(page: tifffile.TiffPage) -> tuple[int, int, int]:
    """(height, width, samples) of a TIFF page from its header alone."""
    shape = tuple(int(side) for side in page.shape)
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if len(shape) == 3 and page.planarconfig == tifffile.PLANARCONFIG.SEPARATE:
        return shape[1], shape[2], shape[0]
    if len(shape) == 3:
        return shape[0], shape[1], shape[2]
    raise InvalidImageShape(f"TIFF page of shape {shape} is not a 2-D image")


def _decode_tiff(data: bytes, page_index: int, limits: ImageLimits) -> NDArray[np.generic]:
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            # OME-TIFF and ImageJ hyperstacks keep one plane per page too, so the page index is
            # the plane index in acquisition order (the first plane by default).
            pages = tif.pages
            if page_index >= len(pages):
                raise InvalidImageShape(
                    f"page {page_index} requested but the TIFF has {len(pages)} page(s)"
                )
            page = pages[page_index]
            if not isinstance(page, tifffile.TiffPage):
                page = page.aspage()
            height, width, samples = _page_layout(page)
            limits.check(height, width, samples)
            pixels = page.asarray()
    except (InvalidImageShape, ImageTooLarge):
        raise
    except Exception as err:
        raise UndecodableImage(f"cannot decode TIFF: {err}") from err
    if pixels.ndim == 3 and page.planarconfig == tifffile.PLANARCONFIG.SEPARATE:
        pixels = np.moveaxis(pixels, 0, -1)
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    return pixels


def decode_image(data: bytes, *, page: int = 0, limits: ImageLimits | None = None) -> NDArray[np.generic]:
    """Decode one encoded image to (H, W) or (H, W, C) pixels in the file's own dtype.

    Raises:
        UndecodableImage: unknown format or corrupt bytes (400).
        ImageTooLarge: more pixels than the limit, checked before decoding (413).
        InvalidImageShape: empty, tiny or non-2-D images, or a missing TIFF page (422).
    """
    limits = limits or ImageLimits()
    if not data:
        raise UndecodableImage("image is empty (0 bytes)")
    kind = sniff_format(data)
    if kind is None:
        raise UndecodableImage("bytes are not a PNG, JPEG or TIFF image")
    if kind == "tiff":
        pixels = _decode_tiff(data, page, limits)
    else:
        if page != 0:
            raise InvalidImageShape(f"page {page} requested but a {kind.upper()} has one page")
        pixels = _decode_pil(data, limits)
    if pixels.ndim == 3 and pixels.shape[2] not in (1, 3, 4):
        raise InvalidImageShape(f"image with {pixels.shape[2]} channels is not gray or RGB")
    if pixels.dtype.kind not in "uif":
        raise UndecodableImage(f"pixel type {pixels.dtype} is not supported")
    return pixels
