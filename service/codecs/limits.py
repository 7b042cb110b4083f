"""Bounds every decoder checks from the header, before it allocates pixels (decode_image's first hop).

Peak memory of one decode is the encoded bytes plus at most `max_decoded_bytes` (default
128 MiB), whatever `max_pixels` allows. The prediction checked against it: PNG/JPEG, 2 x
width x height x Pillow's bytes per pixel (1 for L/P/1, 2 for 16-bit gray, 4 otherwise; 3
buffers when palette or CMYK is converted); TIFF, the decoded page plus 2 x one tile or strip.
With max_pixels = 64 M values that is up to 128 MB for 8-bit gray, 256 MB for 16-bit gray and
171 MB for RGB, so the 128 MiB default binds before max_pixels for all but 8-bit gray.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.errors import ImageTooLarge, InvalidImageShape

MIB = 1024 * 1024


@dataclass(frozen=True)
class ImageLimits:
    """Bounds every image must respect, encoded or already decoded; set from Settings.

    "Pixels" means pixel *values*: height x width x samples per pixel, so an RGB field counts
    three times a gray one of the same size, as its memory does.
    """

    max_pixels: int = 64_000_000
    """Values (height x width x samples) of the decoded image."""

    min_side_px: int = 8
    max_decoded_bytes: int = 128 * MIB
    """Header-predicted peak bytes of one decode (pixels plus decoder buffers)."""

    max_tiff_pages: int = 10_000
    """Longest IFD chain walked; longer chains get 413 too_many_pages."""

    segment_slack_bytes: int = 4 * MIB
    """Decoded tile/strip bytes always allowed, so small images may use ordinary 256-1024 px tiles."""

    max_jpeg_scans: int = 100
    """Scans (SOS markers) per JPEG picture or JPEG tile. Each progressive scan is a full pass over
    the coefficients, even when empty: 2,000 empty 10-byte scans cost 0.55 s on a 4 MP image.
    Encoders write about 10."""

    def check(self, height: int, width: int, samples: int = 1) -> None:
        """Refuse an image from its dimensions alone (see `check_dimensions`)."""
        check_dimensions(height, width, samples, self)


def check_dimensions(height: int, width: int, samples: int, limits: ImageLimits) -> None:
    """Refuse empty, tiny or over-limit images from their declared size alone."""
    if height <= 0 or width <= 0:
        raise InvalidImageShape(f"image has an empty dimension ({height}x{width})")
    if height * width * max(samples, 1) > limits.max_pixels:
        raise ImageTooLarge(
            f"image of {width}x{height}x{samples} exceeds the limit of {limits.max_pixels} values"
        )
    if min(height, width) < limits.min_side_px:
        raise InvalidImageShape(
            f"image of {width}x{height} is smaller than {limits.min_side_px} px on a side"
        )


def check_jpeg_scans(data: bytes, pictures: int, limits: ImageLimits) -> None:
    """Refuse JPEG data with more start-of-scan markers than max_jpeg_scans per picture (413).

    Entropy-coded bytes stuff every 0xFF with 0x00, so FF DA occurs only as a marker (or inside
    metadata such as an EXIF thumbnail, which only makes the count conservative).
    """
    scans = data.count(b"\xff\xda")
    if scans > limits.max_jpeg_scans * max(pictures, 1):
        raise ImageTooLarge(
            f"JPEG data holds {scans} scans, over the limit of {limits.max_jpeg_scans} per picture"
        )


def check_decoded_bytes(nbytes: int, limits: ImageLimits) -> None:
    """Refuse a decode whose predicted peak exceeds max_decoded_bytes (413 image_too_large)."""
    if nbytes > limits.max_decoded_bytes:
        raise ImageTooLarge(
            f"decoding would need about {nbytes} bytes, over the limit of {limits.max_decoded_bytes}"
        )
