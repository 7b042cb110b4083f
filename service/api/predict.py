"""POST /predict: images as multipart, raw bytes or base64 JSON -> labels and probabilities."""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass

import numpy as np
from flask import Blueprint, Response, g, jsonify, request
from numpy.typing import NDArray

from service import metrics
from service.codecs.images import ImageLimits, decode_image
from service.errors import (
    InvalidBase64,
    InvalidInput,
    ModelNotFound,
    NoImage,
    QueueFull,
    TooManyImages,
    UnsupportedMediaType,
)
from service.preprocessing import prepare
from service.repository import ModelInfo
from service.schemas import PredictParams, PredictRequest, Prediction, PredictResponse, SampleInfo
from service.state import ServingState, get_state

bp = Blueprint("predict", __name__)

RAW_MEDIA_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/jpg", "image/tiff", "image/tif", "application/octet-stream"}
)
ACCEPTED_MEDIA_TYPES = sorted(RAW_MEDIA_TYPES | {"multipart/form-data", "application/json"})


@dataclass
class Upload:
    """One image as received, with where it came from."""

    data: bytes
    page: int
    sample: SampleInfo


def _decode_b64(text: str, index: int) -> bytes:
    if text.startswith("data:") and "," in text:  # tolerate data URLs from browsers
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise InvalidBase64(f"instance {index}: b64 is not valid base64") from err


def _uploads_from_request(params: PredictParams, max_images: int) -> list[Upload]:
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        files = request.files.getlist("image")
        if not files:
            raise NoImage(f"multipart body has no 'image' field (fields: {sorted(request.files)})")
        _check_count(len(files), max_images)
        return [
            Upload(file.read(), params.page, SampleInfo(id=file.filename or str(index)))
            for index, file in enumerate(files)
        ]
    if mimetype == "application/json":
        body = request.get_json(silent=True)
        if body is None:
            raise InvalidInput("body is not valid JSON")
        if isinstance(body, dict) and isinstance(body.get("instances"), list):
            _check_count(len(body["instances"]), max_images)
        parsed = PredictRequest.model_validate(body)
        return [
            Upload(
                _decode_b64(instance.b64, index),
                instance.page if instance.page is not None else params.page,
                SampleInfo(
                    id=instance.id if instance.id is not None else str(index),
                    plate=instance.plate, well=instance.well, site=instance.site,
                ),
            )
            for index, instance in enumerate(parsed.instances)
        ]
    if mimetype in RAW_MEDIA_TYPES:
        data = request.get_data(cache=False)
        if not data:
            raise NoImage("request body is empty")
        return [Upload(data, params.page, SampleInfo(id="0"))]
    if not mimetype and not request.content_length:
        raise NoImage("request has no body")
    raise UnsupportedMediaType(
        f"content type '{mimetype or 'none'}' is not accepted; use one of {ACCEPTED_MEDIA_TYPES}"
    )


def _check_count(count: int, max_images: int) -> None:
    if count > max_images:
        raise TooManyImages(f"{count} images in one request; the limit is {max_images}")


def _prepare_all(uploads: list[Upload], info: ModelInfo, limits: ImageLimits) -> NDArray[np.float32]:
    batch = np.empty((len(uploads), info.height, info.width, info.channels), dtype=np.float32)
    for index, upload in enumerate(uploads):
        pixels = decode_image(upload.data, page=upload.page, limits=limits)
        batch[index] = prepare(pixels, info.height, info.width, info.channels)
    return batch


def _predictions(probabilities: NDArray[np.float32], uploads: list[Upload], info: ModelInfo) -> list[Prediction]:
    classes = info.classes or tuple(f"class_{i}" for i in range(probabilities.shape[1]))
    version = str(info.version)
    results = []
    for row, upload in zip(probabilities, uploads):
        best = int(np.argmax(row))
        metrics.PREDICTIONS.labels(info.name, version, classes[best]).inc()
        metrics.CONFIDENCE.labels(info.name, version).observe(float(row[best]))
        results.append(
            Prediction(
                **upload.sample.model_dump(),
                label=classes[best],
                probabilities={name: float(p) for name, p in zip(classes, row)},
                model=info.name,
                model_version=info.version,
            )
        )
    metrics.IMAGES.labels(info.name, version).inc(len(results))
    return results


@bp.post("/predict")
def predict() -> Response:
    """Classify every image in the request; answers in the order the images were sent."""
    started = time.monotonic()
    state: ServingState = get_state()
    params = PredictParams.model_validate(request.args.to_dict())
    if params.model is not None and params.model != state.settings.model_name:
        raise ModelNotFound(f"model '{params.model}' is not served here")
    info, batcher = state.require_ready()
    uploads = _uploads_from_request(params, state.settings.max_images_per_request)
    g.images = len(uploads)
    # Shed load before paying for decoding when the queue obviously cannot take the images.
    if batcher.queued_images + len(uploads) > batcher.max_queue_size:
        raise QueueFull("queue is full", retry_after_s=1)
    limits = ImageLimits(state.settings.max_image_pixels, state.settings.min_image_side_px)
    decode_started = time.monotonic()
    batch = _prepare_all(uploads, info, limits)
    metrics.DECODE_LATENCY.labels(info.name).observe(time.monotonic() - decode_started)
    probabilities, g.batch_ids = state.run(batch, waited_s=time.monotonic() - started)
    response = PredictResponse(
        request_id=g.request_id,
        model=info.name,
        model_version=info.version,
        predictions=_predictions(probabilities, uploads, info),
    )
    return jsonify(response.model_dump(exclude_none=True))
