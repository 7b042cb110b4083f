"""POST /predict: images as multipart, raw bytes or base64 JSON -> labels and probabilities."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from flask import Blueprint, Response, g, jsonify, request
from numpy.typing import NDArray

from service.codecs.images import ImageLimits
from service.errors import InvalidInput, NoImage, UnsupportedMediaType
from service.inference import (
    ImageInput,
    check_image_count,
    class_names,
    decode_b64,
    label_and_observe,
    prepare_inputs,
)
from service.models import get_manager
from service.openapi import IMAGE_BODY, MULTIPART_IMAGES, document
from service.repository import ModelInfo
from service.schemas import (
    ErrorResponse,
    Prediction,
    PredictParams,
    PredictRequest,
    PredictResponse,
    SampleInfo,
)

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
    return decode_b64(text, f"instance {index}: b64")


def _uploads_from_request(params: PredictParams, max_images: int) -> list[Upload]:
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        files = request.files.getlist("image")
        if not files:
            raise NoImage(f"multipart body has no 'image' field (fields: {sorted(request.files)})")
        check_image_count(len(files), max_images)
        return [
            Upload(file.read(), params.page, SampleInfo(id=file.filename or str(index)))
            for index, file in enumerate(files)
        ]
    if mimetype == "application/json":
        body = request.get_json(silent=True)
        if body is None:
            raise InvalidInput("body is not valid JSON")
        if isinstance(body, dict) and isinstance(body.get("instances"), list):
            check_image_count(len(body["instances"]), max_images)
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


def _predictions(probabilities: NDArray[np.float32], uploads: list[Upload], info: ModelInfo) -> list[Prediction]:
    names = class_names(info, probabilities.shape[1])
    labels = label_and_observe(probabilities, info)
    return [
        Prediction(
            **upload.sample.model_dump(),
            label=label,
            probabilities={name: float(p) for name, p in zip(names, row)},
            model=info.name,
            model_version=info.version,
        )
        for row, upload, label in zip(probabilities, uploads, labels)
    ]


@bp.post("/predict")
@document(
    "Classify images (multipart, raw bytes or base64 JSON); answers in order",
    tag="predict",
    body={"application/json": PredictRequest, "multipart/form-data": MULTIPART_IMAGES, **IMAGE_BODY},
    query=PredictParams,
    responses={status: (PredictResponse if status == 200 else ErrorResponse)
               for status in (200, 400, 404, 413, 415, 422, 500, 502, 503, 504)},
)
def predict() -> Response:
    """Classify every image in the request; answers in the order the images were sent."""
    deadline = time.monotonic()
    manager = get_manager()
    settings = manager.settings
    deadline += settings.request_timeout_s
    params = PredictParams.model_validate(request.args.to_dict())
    g.model = params.model or manager.default_model()
    manager.get(params.model, params.version)  # 404 / 503 before reading a large body
    uploads = _uploads_from_request(params, settings.max_images_per_request)
    g.images = len(uploads)
    limits = ImageLimits(settings.max_image_pixels, settings.min_image_side_px)
    encoded: list[ImageInput] = [(upload.data, upload.page) for upload in uploads]
    probabilities, info, g.batch_ids = manager.infer(
        lambda info: prepare_inputs(encoded, info, limits),
        count=len(uploads), name=params.model, version=params.version, deadline=deadline,
    )
    response = PredictResponse(
        request_id=g.request_id,
        model=info.name,
        model_version=info.version,
        predictions=_predictions(probabilities, uploads, info),
    )
    return jsonify(response.model_dump(exclude_none=True))
