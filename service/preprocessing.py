"""Pixels -> model input: the single preprocessing path shared by training and serving.

Decoded pixels (any size, gray or RGB, 8/16-bit or float) become float32 arrays of the model's
input shape in *raw intensity units*. Intensity normalisation is deliberately not done here: it
lives inside the SavedModel's serving signature (`training/model.py::normalize_intensity`), so
every backend (in-process TensorFlow, TF Serving over gRPC) gives the same answer for the same
pixels, and 12-bit data in 16-bit files is never divided by 65535.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

#: Bump when the arithmetic below changes; exported models record it with the source hash.
PREPROCESSING_VERSION = "1"

# ITU-R BT.601 luma, the weights PIL and OpenCV use for RGB -> L.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def preprocessing_hash() -> str:
    """SHA-256 of this module and the in-graph normalisation: detects train/serve skew."""
    digest = hashlib.sha256()
    here = Path(__file__).resolve()
    for path in (here, here.parent.parent / "training" / "normalization.py"):
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def to_gray(pixels: NDArray[np.generic]) -> NDArray[np.float32]:
    """Collapse (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) pixels to one float32 plane."""
    data = np.asarray(pixels)
    if data.ndim == 2:
        return data.astype(np.float32, copy=False)
    if data.ndim == 3 and data.shape[2] == 1:
        return data[:, :, 0].astype(np.float32, copy=False)
    if data.ndim == 3 and data.shape[2] in (3, 4):
        # NOTE: alpha is ignored, not composited: microscopy RGBA is an export artefact.
        return np.tensordot(data[:, :, :3].astype(np.float32), _LUMA_WEIGHTS, axes=([2], [0]))
    raise ValueError(f"cannot convert pixels of shape {data.shape} to gray")


def to_rgb(pixels: NDArray[np.generic]) -> NDArray[np.float32]:
    """Give (H, W, 3) float32 pixels, replicating a gray plane into three channels."""
    data = np.asarray(pixels)
    if data.ndim == 3 and data.shape[2] in (3, 4):
        return data[:, :, :3].astype(np.float32, copy=False)
    gray = to_gray(data)
    return np.repeat(gray[:, :, np.newaxis], 3, axis=2)


def _resize_plane(plane: NDArray[np.float32], height: int, width: int) -> NDArray[np.float32]:
    if plane.shape == (height, width):
        return plane
    # PIL's 32-bit float mode keeps 16-bit ranges exact; bilinear with antialiasing on shrink.
    image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
    resized = image.resize((width, height), resample=Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def prepare(pixels: NDArray[np.generic], height: int, width: int, channels: int) -> NDArray[np.float32]:
    """Turn decoded pixels into one (height, width, channels) float32 model input."""
    out = np.empty((height, width, channels), dtype=np.float32)
    prepare_into(pixels, out)
    return out


def prepare_into(pixels: NDArray[np.generic], out: NDArray[np.float32]) -> None:
    """Write one model input into `out` (a batch's slot, (height, width, channels) float32).

    A gray image already at the model's size is converted straight into the slot: for a
    1360x1024 16-bit field that saves two 5.6 MB float32 copies per image.
    """
    height, width, channels = out.shape
    data = np.asarray(pixels)
    if channels == 1:
        if data.ndim == 3 and data.shape[2] == 1:
            data = data[:, :, 0]
        if data.ndim == 2 and data.shape == (height, width):
            np.copyto(out[:, :, 0], data, casting="unsafe")
            return
        out[:, :, 0] = _resize_plane(to_gray(data), height, width)
        return
    if channels == 3:
        rgb = to_rgb(data)
        for c in range(3):
            out[:, :, c] = _resize_plane(rgb[:, :, c], height, width)
        return
    raise ValueError(f"models with {channels} input channels are not supported")
