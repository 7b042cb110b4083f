"""PNG and JPEG bytes -> pixels through Pillow, for decode_image, bounded from the header.

Only the first frame is ever decoded: APNG animation frames and the extra pictures of an MPO
(multi-picture JPEG) are never loaded, so their sizes cost nothing. The frame that is decoded
is checked against the limits from its header and again after loading.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from service.codecs.limits import ImageLimits, check_decoded_bytes, check_dimensions, check_jpeg_scans
from service.errors import ImageTooLarge, InvalidImageShape, ServiceError, UndecodableImage

Reserve = Callable[[int], AbstractContextManager[object]]

# MPO files open through the JPEG plugin's factory; "MPO" itself is not an open() format.
_FORMATS = {"png": ("PNG",), "jpeg": ("JPEG",)}
# Bytes per pixel of Pillow's own buffer (its ImagingMemory rows): 1-byte modes, 16-bit modes,
# and 4 bytes for everything else (RGB is stored as RGBX, "I" and "F" as 32-bit).
_ONE_BYTE_MODES = frozenset({"1", "L", "P"})
_CONVERTED_MODES = frozenset({"1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"})


def _pillow_pixel_bytes(mode: str) -> int:
    if mode in _ONE_BYTE_MODES:
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def predicted_bytes(width: int, height: int, mode: str) -> int:
    """Peak bytes of decoding one frame: Pillow's buffer, a conversion, and the NumPy copy."""
    buffer = width * height * _pillow_pixel_bytes(mode)
    if mode in _CONVERTED_MODES:
        return buffer + 2 * width * height * 4  # converted to RGB(A), then copied
    return 2 * buffer


def decode_raster(data: bytes, kind: str, limits: ImageLimits, reserve: Reserve) -> NDArray[np.generic]:
    """Decode the first frame of a PNG or JPEG (MPO included) to (H, W) or (H, W, C)."""
    try:
        with warnings.catch_warnings():
            # Pillow's bomb warning is replaced by our explicit, configurable checks; its
            # DecompressionBombError (over 2x Image.MAX_IMAGE_PIXELS) still fires first for
            # limits set above that and becomes 413 below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # formats=: a PNG signature must parse as a PNG, never fall through to other plugins.
            image = Image.open(io.BytesIO(data), formats=_FORMATS[kind])
            width, height = image.size
            mode = image.mode
            check_dimensions(height, width, len(image.getbands()), limits)
            predicted = predicted_bytes(width, height, mode)
            if image.info.get("progressive"):
                # libjpeg keeps every DCT coefficient of a progressive JPEG: 2 bytes per sample.
                predicted += 2 * width * height * len(image.getbands())
            check_decoded_bytes(predicted, limits)
            if kind == "jpeg":
                check_jpeg_scans(data, 1, limits)
            with reserve(predicted):
                image.load()
                if image.size != (width, height) or image.mode != mode:
                    raise InvalidImageShape(f"frame changed from {width}x{height} {mode} while decoding")
                converted: Image.Image = image
                if mode in _CONVERTED_MODES:
                    converted = image.convert("RGBA" if "A" in mode or mode == "P" else "RGB")
                elif mode == "LA":
                    converted = image.convert("L")
                pixels = np.asarray(converted)
    except ServiceError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(str(err)) from err
    except MemoryError as err:
        raise ImageTooLarge("image needs more memory than this worker allows") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error) as err:
        raise UndecodableImage(f"cannot decode image: {err}") from err
    return pixels

