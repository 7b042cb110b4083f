"""Decoding real microscopy files shipped inside packages, and files written with tifffile."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from service.codecs.images import ImageLimits, decode_image, sniff_format
from service.errors import ImageTooLarge, InvalidImageShape, UndecodableImage
from tests.conftest import tiff_bytes


def _package_file(package: str, relative: str) -> Path:
    """A data file inside an installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin, f"{package} is not installed (requirements-testdata.txt)"
    path = Path(spec.origin).parent / relative
    assert path.is_file(), path
    return path


def test_stardist_uint16_nuclei_tiff() -> None:
    data = _package_file("stardist", "data/images/img2d.tif").read_bytes()
    pixels = decode_image(data)
    assert pixels.shape == (512, 512) and pixels.dtype == np.uint16
    np.testing.assert_array_equal(pixels, tifffile.imread(io.BytesIO(data)))


def test_scikit_image_multipage_tiff_pages() -> None:
    data = _package_file("skimage", "data/multipage.tif").read_bytes()
    first, second = decode_image(data, page=0), decode_image(data, page=1)
    assert first.shape == second.shape == (15, 10)
    assert not np.array_equal(first, second)
    with pytest.raises(InvalidImageShape, match="2 page"):
        decode_image(data, page=2)


def test_scikit_image_planar_rgb_float_tiff_becomes_channels_last() -> None:
    data = _package_file("skimage", "data/multipage_rgb.tif").read_bytes()
    pixels = decode_image(data)
    assert pixels.shape == (10, 10, 3)
    assert pixels.dtype.kind == "f"


def test_mahotas_nuclei_png_is_1344_by_1024_rgb() -> None:
    data = _package_file("mahotas", "demos/data/nuclear.png").read_bytes()
    pixels = decode_image(data)
    assert pixels.shape == (1024, 1344, 3) and pixels.dtype == np.uint8


@pytest.mark.parametrize("dtype, high", [(np.uint8, 255), (np.uint16, 4095), (np.uint16, 65535)])
def test_tifffile_gray_bit_depths_round_trip(dtype: type, high: int, rng: np.random.Generator) -> None:
    pixels = rng.integers(0, high + 1, size=(64, 80), dtype=dtype)
    np.testing.assert_array_equal(decode_image(tiff_bytes(pixels)), pixels)


@pytest.mark.parametrize("compression", ["zlib", "lzw", "packbits"])
def test_compressed_tiff(compression: str, rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 4096, size=(64, 80), dtype=np.uint16)
    np.testing.assert_array_equal(decode_image(tiff_bytes(pixels, compression=compression)), pixels)


def test_rgb_tiff(rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 255, size=(40, 50, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(tiff_bytes(pixels, photometric="rgb")), pixels)


def test_ome_tiff_planes_by_page(rng: np.random.Generator) -> None:
    stack = rng.integers(0, 4096, size=(2, 3, 32, 40), dtype=np.uint16)  # (C, Z, Y, X)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, stack, ome=True, metadata={"axes": "CZYX"})
    data = buffer.getvalue()
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        assert tif.is_ome
    np.testing.assert_array_equal(decode_image(data), stack[0, 0])
    np.testing.assert_array_equal(decode_image(data, page=4), stack[1, 1])


def test_bigtiff(rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 65535, size=(32, 40), dtype=np.uint16)
    np.testing.assert_array_equal(decode_image(tiff_bytes(pixels, bigtiff=True)), pixels)


def test_16bit_png_and_jpeg(rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 65535, size=(32, 40), dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    np.testing.assert_array_equal(decode_image(buffer.getvalue()).astype(np.uint16), pixels)
    buffer = io.BytesIO()
    Image.fromarray((pixels >> 8).astype(np.uint8)).save(buffer, format="JPEG", quality=95)
    decoded = decode_image(buffer.getvalue())
    assert decoded.shape == (32, 40) and decoded.dtype == np.uint8


def test_sniffing() -> None:
    assert sniff_format(b"\x89PNG\r\n\x1a\nrest") == "png"
    assert sniff_format(b"\xff\xd8\xff\xe0") == "jpeg"
    assert sniff_format(b"II*\x00....") == "tiff"
    assert sniff_format(b"MM\x00*....") == "tiff"
    assert sniff_format(b"GIF89a") is None


def test_pixel_limit_is_checked_before_decoding(rng: np.random.Generator) -> None:
    data = tiff_bytes(rng.integers(0, 255, size=(100, 100), dtype=np.uint8))
    with pytest.raises(ImageTooLarge):
        decode_image(data, limits=ImageLimits(max_pixels=9_999))


def test_truncated_tiff_is_undecodable(rng: np.random.Generator) -> None:
    data = tiff_bytes(rng.integers(0, 255, size=(100, 100), dtype=np.uint8))
    with pytest.raises(UndecodableImage):
        decode_image(data[:200])


def test_non_image_tiff_shape_is_refused(rng: np.random.Generator) -> None:
    volume = tiff_bytes(rng.integers(0, 255, size=(4, 32, 40, 3), dtype=np.uint8), photometric="rgb")
    assert decode_image(volume).shape == (32, 40, 3)  # pages of RGB images are fine
    with pytest.raises(InvalidImageShape):
        decode_image(tiff_bytes(rng.integers(0, 255, size=(32, 40, 7), dtype=np.uint8), planarconfig="contig", photometric="minisblack"))
