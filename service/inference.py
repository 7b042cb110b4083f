"""Shared by every protocol's views: encoded images -> model input, outputs -> labels + metrics."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from service import metrics
from service.codecs.images import ImageLimits, decode_image
from service.errors import ImageTooLarge, InvalidBase64, InvalidImageShape, TooManyImages
from service.preprocessing import prepare
from service.repository import ModelInfo

#: An image as a request carries it: encoded bytes with the TIFF page to read, or pixels a
#: client already decoded (TF Serving's numeric instances, Open Inference Protocol tensors).
ImageInput = tuple[bytes, int] | NDArray[np.generic]


def decode_b64(text: object, where: str) -> bytes:
    """Base64 text of an encoded image, as every protocol carries it in JSON."""
    try:
        return base64.b64decode(text, validate=True)  # type: ignore[arg-type]
    except (binascii.Error, ValueError, TypeError) as err:
        raise InvalidBase64(f"{where}: not valid base64") from err


def check_image_count(count: int, limit: int) -> None:
    """Refuse a request with more images than the limit (413) before decoding any."""
    if count > limit:
        raise TooManyImages(f"{count} images in one request; the limit is {limit}")


def prepare_inputs(images: Sequence[ImageInput], info: ModelInfo, limits: ImageLimits) -> NDArray[np.float32]:
    """Decode what is encoded and prepare everything for `info`'s input, as one batch."""
    started = time.monotonic()
    batch = np.empty((len(images), info.height, info.width, info.channels), dtype=np.float32)
    for index, image in enumerate(images):
        if isinstance(image, tuple):
            data, page = image
            pixels = decode_image(data, page=page, limits=limits)
        else:
            pixels = image
            check_pixel_shape(pixels, limits)
        batch[index] = prepare(pixels, info.height, info.width, info.channels)
    metrics.DECODE_LATENCY.labels(info.name).observe(time.monotonic() - started)
    return batch


def check_pixel_shape(pixels: NDArray[np.generic], limits: ImageLimits) -> None:
    """The same bounds decode_image enforces, for pixels that arrive already decoded."""
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (1, 3, 4)):
        raise InvalidImageShape(f"pixel array of shape {list(pixels.shape)} is not a gray or RGB image")
    height, width = pixels.shape[:2]
    if height * width > limits.max_pixels:
        raise ImageTooLarge(f"pixel array of {width}x{height} exceeds {limits.max_pixels} pixels")
    if min(height, width) < limits.min_side_px:
        raise InvalidImageShape(f"pixel array of {width}x{height} is smaller than {limits.min_side_px} px")


def class_names(info: ModelInfo, width: int) -> tuple[str, ...]:
    """The model's class names, or class_0.. when its metadata names none."""
    return info.classes if len(info.classes) == width else tuple(f"class_{i}" for i in range(width))


def label_and_observe(probabilities: NDArray[np.float32], info: ModelInfo) -> list[str]:
    """Predicted label per row; counts labels and confidence per model version (drift signal)."""
    names = class_names(info, probabilities.shape[1])
    version = str(info.version)
    best = np.argmax(probabilities, axis=1)
    labels = [names[i] for i in best]
    for label, row, index in zip(labels, probabilities, best):
        metrics.PREDICTIONS.labels(info.name, version, label).inc()
        metrics.CONFIDENCE.labels(info.name, version).observe(float(row[index]))
    metrics.IMAGES.labels(info.name, version).inc(len(labels))
    return labels
