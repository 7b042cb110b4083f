"""Non-phase-contrast images shipped inside installed packages: the gate's negative test set.

Fluorescence nuclei (stardist's uint16 TIFF, mahotas's nuclear.png), IHC / H&E, and natural
photos (scikit-image's data directory). None of them is a phase-contrast MDCK field, so the
QC/OOD gate should flag every one; `make train` records the fraction it does.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif")
#: (package, relative folder or file); folders contribute every image file directly inside.
SOURCES = (
    ("stardist", "data/images/img2d.tif"),
    ("stardist", "data/images/histo.jpg"),
    ("mahotas", "demos/data/nuclear.png"),
    ("skimage", "data"),
)


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def package_image_paths() -> list[tuple[str, Path]]:
    """(name, path) of every available package image, in a fixed order; missing ones skipped."""
    found = []
    for package, relative in SOURCES:
        root = _package_dir(package)
        if root is None:
            continue
        target = root / relative
        files = sorted(p for p in target.iterdir() if p.suffix.lower() in _SUFFIXES) if target.is_dir() else [target]
        found += [(f"{package}/{p.relative_to(root)}", p) for p in files if p.is_file()]
    return found


def load_pixels(path: Path) -> NDArray[np.generic]:
    """Decoded pixels of the first plane of a PNG/JPEG/GIF/TIFF (2-D, or H x W x 3/4)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        data = tifffile.imread(path)
        while data.ndim > 3 or (data.ndim == 3 and data.shape[-1] not in (3, 4)):
            data = data[0]
        return data
    from PIL import Image

    with Image.open(path) as image:
        image.seek(0)
        if image.mode not in ("L", "I;16", "I", "F", "RGB", "RGBA"):
            image = image.convert("RGB")
        return np.asarray(image)


def load_package_images(height: int, width: int) -> tuple[list[str], NDArray[np.float32]]:
    """Names and model inputs (N, height, width, 1), raw intensity units, via `prepare`."""
    from service.preprocessing import prepare

    names, images = [], []
    for name, path in package_image_paths():
        try:
            pixels = load_pixels(path)
        except Exception:  # noqa: BLE001 - a file the decoders cannot read is simply skipped
            continue
        names.append(name)
        images.append(prepare(pixels, height, width, 1))
    return names, np.stack(images) if images else np.zeros((0, height, width, 1), np.float32)
