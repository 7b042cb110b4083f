"""TIFF bytes -> one page's pixels, for decode_image: 8/16-bit, multi-page, OME and BigTIFF.

Everything that costs memory or time is bounded from the headers before tifffile decodes:
the IFD chain is walked here with a page cap and cycle detection (tifffile only looks for
cycles in the first 100 pages, and `len(pages)` on a chain that loops after page 100 walks
for ever), compression is allow-listed, and tile/strip geometry is held to the image's size.
"""

from __future__ import annotations

import io
import math
import re
import struct
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import tifffile
from numpy.typing import NDArray

from service.codecs.limits import ImageLimits, check_decoded_bytes, check_dimensions, check_jpeg_scans
from service.errors import (
    ImageTooLarge,
    InvalidImageShape,
    ServiceError,
    TooManyPages,
    UndecodableImage,
    UnsupportedCompression,
)

Reserve = Callable[[int], AbstractContextManager[object]]

# TIFF Compression tag values accepted: none, LZW, JPEG (new style), Adobe deflate, PackBits,
# deflate, zstd. Old-style JPEG (6), JPEG 2000, JPEG XL, LERC, WebP, LZMA and the vendor
# codecs are refused: microscopes do not write them here, and each is attack surface.
ALLOWED_COMPRESSIONS = frozenset({1, 5, 7, 8, 32773, 32946, 50000})
_JPEG = 7
_MAX_TAGS_PER_IFD = 4096  # tifffile's own limit: an IFD claiming more ends the chain
# JPEG start-of-frame markers: FF C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_SOF_PATTERN = re.compile(rb"\xff[\xc0-\xc3\xc5-\xc7\xc9-\xcb\xcd-\xcf]")


def walk_ifds(data: bytes, max_pages: int) -> list[int]:
    """File offsets of the main IFD chain, read the way tifffile reads it, but bounded.

    Raises:
        TooManyPages: the chain holds more than `max_pages` IFDs (413).
        UndecodableImage: the chain loops back to an IFD already seen (400).
    """
    little = data[:2] == b"II"
    order = "<" if little else ">"
    bigtiff = struct.unpack(order + "H", data[2:4])[0] == 43
    offset_format, offset_size = (order + "Q", 8) if bigtiff else (order + "I", 4)
    count_format, count_size = (order + "Q", 8) if bigtiff else (order + "H", 2)
    tag_size = 20 if bigtiff else 12
    header_end = 16 if bigtiff else 8
    if len(data) < header_end:
        raise UndecodableImage("TIFF header is truncated")
    offset = struct.unpack_from(offset_format, data, header_end - offset_size)[0]
    offsets: list[int] = []
    seen: set[int] = set()
    while 0 < offset < len(data):
        if offset in seen:
            raise UndecodableImage(
                f"TIFF IFD chain loops back to offset {offset} after {len(offsets)} page(s)"
            )
        if offset + count_size > len(data):
            break
        tags = struct.unpack_from(count_format, data, offset)[0]
        if tags > _MAX_TAGS_PER_IFD:
            break
        next_at = offset + count_size + tags * tag_size
        seen.add(offset)
        offsets.append(offset)
        if len(offsets) > max_pages:
            raise TooManyPages(f"TIFF has more than {max_pages} pages")
        if next_at + offset_size > len(data):
            break
        offset = struct.unpack_from(offset_format, data, next_at)[0]
    return offsets


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


def _segment_shape(page: tifffile.TiffPage) -> tuple[int, int, int, int]:
    """(depth, length, width, samples) of one tile or strip, as tifffile will decode it."""
    samples = int(page.samplesperpixel) if page.planarconfig == tifffile.PLANARCONFIG.CONTIG else 1
    if page.is_tiled:
        return int(page.tiledepth), int(page.tilelength), int(page.tilewidth), samples
    # tifffile clamps RowsPerStrip to ImageLength, so a strip is never longer than the image.
    return 1, int(page.rowsperstrip), int(page.imagewidth), samples


def _jpeg_frames(segment: bytes | memoryview) -> list[tuple[int, int, int]]:
    """(height, width, components) of every start-of-frame marker anywhere in the bytes.

    libjpeg skips stray bytes between markers, so a parser that stops at the first oddity
    misses the frame libjpeg will use (found by the fuzzer: a 16x16 tile decoded as 30000x30000).
    Entropy-coded data never holds FF followed by a SOF byte, so every match here is a marker
    (or metadata, which only makes the check stricter).
    """
    frames = []
    for match in _SOF_PATTERN.finditer(segment):
        at = match.start()
        if at + 10 <= len(segment):
            height, width = struct.unpack_from(">HH", segment, at + 5)
            frames.append((height, width, segment[at + 9]))
    return frames


def _check_segments(page: tifffile.TiffPage, data: bytes, output_bytes: int, limits: ImageLimits) -> int:
    """Bound tile/strip geometry before decoding; return one decoded segment's size in bytes.

    tifffile decompresses every segment into a buffer of the declared tile or strip size, so a
    16x16 image may declare one 65536x65536 tile (4 GiB from a 4 MB file), and a JPEG tile's
    own frame header may declare far more than its tile. (tifffile keeps only as many offsets
    as the image needs, so many strips sharing one small stream cost no more than the image;
    the segment count is bounded here all the same.)
    """
    depth, length, width, samples = _segment_shape(page)
    itemsize = page.dtype.itemsize if page.dtype is not None else max(1, math.ceil(page.bitspersample / 8))
    segment_bytes = depth * length * width * samples * itemsize
    segments = len(page.dataoffsets)
    allowed = max(4 * output_bytes, limits.segment_slack_bytes)
    if segment_bytes > allowed or segments * segment_bytes > allowed:
        raise ImageTooLarge(
            f"TIFF declares {segments} segment(s) of {width}x{length}x{samples} "
            f"({segments * segment_bytes} bytes decoded) for a {output_bytes}-byte image"
        )
    if page.compression == _JPEG:
        check_jpeg_scans(data, segments, limits)
        view = memoryview(data)
        tables = _jpeg_frames(page.jpegtables or b"")
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            segment = view[offset:offset + count]
            if not segment:
                continue  # a missing tile: tifffile fills it, nothing is decoded
            frames = tables + _jpeg_frames(segment)
            if not frames:
                raise UndecodableImage(f"JPEG segment at offset {offset} has no frame header")
            for height, width_px, components in frames:
                if height > length or width_px > width or components > 4:
                    raise ImageTooLarge(
                        f"JPEG segment declares {width_px}x{height}x{components} inside a "
                        f"{width}x{length} segment"
                    )
    return segment_bytes


def decode_tiff(data: bytes, page_index: int, limits: ImageLimits, reserve: Reserve) -> NDArray[np.generic]:
    """Decode one page (OME planes and ImageJ hyperstacks keep one plane per page)."""
    try:
        pages = walk_ifds(data, limits.max_tiff_pages)
        if not pages:
            raise UndecodableImage("TIFF has no readable page (first IFD offset is past the end)")
        if page_index >= len(pages):
            raise InvalidImageShape(f"page {page_index} requested but the TIFF has {len(pages)} page(s)")
        # The special loaders (LSM, ScanImage, NDPI) read every page or compute virtual ones;
        # one page by index needs none of them.
        with tifffile.TiffFile(io.BytesIO(data), is_lsm=False, is_scanimage=False, is_ndpi=False) as tif:
            # Safe: the chain up to page_index was walked above, acyclic and within the cap.
            page = tif.pages[page_index]
            if not isinstance(page, tifffile.TiffPage):
                page = page.aspage()
            height, width, samples = _page_layout(page)
            check_dimensions(height, width, samples, limits)
            if int(page.compression) not in ALLOWED_COMPRESSIONS:
                raise UnsupportedCompression(f"TIFF compression {int(page.compression)} is not supported")
            itemsize = page.dtype.itemsize if page.dtype is not None else 1
            output_bytes = height * width * max(samples, 1) * itemsize
            segment_bytes = _check_segments(page, data, output_bytes, limits)
            # One segment at a time (maxworkers=1): the compressed and decoded copies of a
            # segment live next to the output array.
            predicted = output_bytes + 2 * segment_bytes
            if page.bitspersample == 1:
                predicted += 2 * output_bytes  # bool pixels become uint8 * 255 below
            check_decoded_bytes(predicted, limits)
            with reserve(predicted):
                pixels = page.asarray(maxworkers=1)
                if pixels.ndim == 3 and page.planarconfig == tifffile.PLANARCONFIG.SEPARATE:
                    pixels = np.moveaxis(pixels, 0, -1)
                if pixels.dtype == bool:
                    pixels = pixels.astype(np.uint8) * 255
    except ServiceError:
        raise
    except MemoryError as err:
        raise ImageTooLarge("TIFF needs more memory than this worker allows") from err
    except Exception as err:  # tifffile raises many types on corrupt files
        raise UndecodableImage(f"cannot decode TIFF: {err}") from err
    return pixels
