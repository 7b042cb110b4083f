"""Atheris target for decode_image: any exception other than a 4xx ServiceError is a crash.

`make fuzz` runs `python -m fuzz.decoders CORPUS_DIR -atheris_runs=N -timeout=5
-rss_limit_mb=2048 ...`: libFuzzer kills an input after 5 s or 2 GiB of RSS and reports it as
a hang or an OOM; RLIMIT_AS adds a hard 3 GiB cap. Seeds (valid PNG/JPEG/TIFF variants made
here, plus the files of tests/hostile/) go into CORPUS_DIR when it is empty. Crashes are written
as crash-* under -artifact_prefix and become regression files tests/hostile/fuzz-<what>.bin.
"""

from __future__ import annotations

import io
import logging
import resource
import sys
from pathlib import Path

import atheris
import numpy as np

# NOTE: tifffile and Pillow's plugins are instrumented too, so coverage guides the mutations
# through the parsers that do the work, not only through our own checks.
with atheris.instrument_imports(include=["tifffile", "PIL", "service"]):
    import tifffile
    from PIL import Image, JpegImagePlugin, MpoImagePlugin, PngImagePlugin  # noqa: F401

    from service.codecs import budget, images, limits, raster, tiff  # noqa: F401
    from service.codecs.images import ImageLimits, decode_image
    from service.errors import ServiceError

# Small enough that a pixel or byte bomb is cheap to reach, large enough for every seed.
LIMITS = ImageLimits(max_pixels=4_000_000, max_decoded_bytes=64 * 1024**2, max_tiff_pages=256)
ADDRESS_SPACE_BYTES = 3 * 1024**3
HOSTILE = Path(__file__).resolve().parent.parent / "tests" / "hostile"


def seeds() -> dict[str, bytes]:
    """Valid inputs covering each format, compression and layout the service accepts."""
    rng = np.random.default_rng(0)
    gray8 = rng.integers(0, 255, size=(24, 32), dtype=np.uint8)
    gray16 = rng.integers(0, 4096, size=(24, 32), dtype=np.uint16)
    rgb = rng.integers(0, 255, size=(24, 32, 3), dtype=np.uint8)
    out: dict[str, bytes] = {}

    def tif(name: str, pixels: np.ndarray, **kwargs: object) -> None:
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, pixels, **kwargs)
        out[name] = buffer.getvalue()

    def pil(name: str, pixels: np.ndarray, fmt: str, **kwargs: object) -> None:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt, **kwargs)
        out[name] = buffer.getvalue()

    tif("gray16.tif", gray16)
    for compression in ("zlib", "lzw", "packbits", "zstd"):
        tif(f"gray16-{compression}.tif", gray16, compression=compression)
    tif("gray16-tiled.tif", gray16, tile=(16, 16), compression="zlib", predictor=True)
    tif("rgb-jpeg-tiled.tif", rgb, photometric="rgb", compression="jpeg", tile=(16, 16))
    tif("rgb-planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    tif("stack-bigtiff.tif", np.stack([gray8, gray8]), bigtiff=True)
    tif("gray8-be.tif", gray8, byteorder=">")
    tif("float32.tif", gray16.astype(np.float32))
    pil("gray8.png", gray8, "PNG")
    pil("gray16.png", gray16, "PNG")
    pil("rgb.png", rgb, "PNG")
    pil("gray8.jpg", gray8, "JPEG")
    pil("rgb-progressive.jpg", rgb, "JPEG", progressive=True)
    return out


def test_one_input(data: bytes) -> None:
    """Decode the first page, and page 1 when the last byte says so."""
    page = 1 if data and data[-1] == 0x01 else 0
    try:
        decode_image(data, page=page, limits=LIMITS)
    except ServiceError as err:
        if not 400 <= err.status_code < 500:
            raise


def main() -> None:
    logging.disable(logging.CRITICAL)  # tifffile logs every corrupt tag it meets
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES, resource.RLIM_INFINITY))
    corpus = next((Path(arg) for arg in sys.argv[1:] if not arg.startswith("-")), None)
    if corpus is not None:
        corpus.mkdir(parents=True, exist_ok=True)
        if not any(corpus.iterdir()):
            for name, data in seeds().items():
                (corpus / name).write_bytes(data)
            # The hostile corpus starts the fuzzer next to each bound (pages, tiles, bombs).
            for path in HOSTILE.iterdir():
                if path.suffix in {".tif", ".png", ".jpg", ".bin"} and 0 < path.stat().st_size <= 65536:
                    (corpus / f"hostile-{path.name}").write_bytes(path.read_bytes())
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
