"""POST /predict: images as multipart, raw bytes or base64 JSON -> labels and probabilities."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Blueprint, Response, g, jsonify, request

from service.api.common import begin_inference, check_image_count, read_json_body, run_inference
from service.api.openapi import IMAGE_BODY, MULTIPART_IMAGES, document
from service.errors import NoImage, UnsupportedMediaType
from service.pipeline import EncodedImage, InferenceResult, ModelRoute, decode_b64
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

    image: EncodedImage
    sample: SampleInfo


def _decode_b64(text: str, index: int) -> bytes:
    if text.startswith("data:") and "," in text:  # tolerate data URLs from browsers
        text = text.split(",", 1)[1]
    return decode_b64(text, f"instance {index}: b64")


def _uploads_from_request(params: PredictParams) -> list[Upload]:
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        files = request.files.getlist("image")
        if not files:
            raise NoImage(f"multipart body has no 'image' field (fields: {sorted(request.files)})")
        check_image_count(len(files))
        return [
            Upload(EncodedImage(file.read(), params.page), SampleInfo(id=file.filename or str(index)))
            for index, file in enumerate(files)
        ]
    if mimetype == "application/json":
        body = read_json_body()
        if isinstance(body, dict) and isinstance(body.get("instances"), list):
            check_image_count(len(body["instances"]))
        parsed = PredictRequest.model_validate(body)
        return [
            Upload(
                EncodedImage(
                    _decode_b64(instance.b64, index), instance.page if instance.page is not None else params.page
                ),
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
        return [Upload(EncodedImage(data, params.page), SampleInfo(id="0"))]
    if not mimetype and not request.content_length:
        raise NoImage("request has no body")
    raise UnsupportedMediaType(
        f"content type '{mimetype or 'none'}' is not accepted; use one of {ACCEPTED_MEDIA_TYPES}"
    )


def _predictions(result: InferenceResult, uploads: list[Upload]) -> list[Prediction]:
    return [
        Prediction(
            **upload.sample.model_dump(),
            label=label,
            probabilities={name: float(p) for name, p in zip(result.class_names, row)},
            model=result.info.name,
            model_version=result.info.version,
        )
        for row, upload, label in zip(result.probabilities, uploads, result.labels)
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
    params = PredictParams.model_validate(request.args.to_dict())
    route = ModelRoute(params.model, params.version)
    begin_inference(route)  # 404 / 503 before reading a large body
    uploads = _uploads_from_request(params)
    result = run_inference([upload.image for upload in uploads], route)
    response = PredictResponse(
        request_id=g.request_id,
        model=result.info.name,
        model_version=result.info.version,
        predictions=_predictions(result, uploads),
    )
    return jsonify(response.model_dump(exclude_none=True))
