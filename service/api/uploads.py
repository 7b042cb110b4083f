"""The images of a `POST /predict` request, with where each came from (plate, well, site...).

Three ways in: multipart (`image` file parts, plus an optional `metadata` part: a JSON array
with one object per image, in order), base64 JSON (`instances`, metadata inline), or one raw
image body (metadata in the query string). Every way yields the same `Upload`s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import request
from pydantic import TypeAdapter

from service.api.common import check_image_count, parse_json, read_json_body
from service.errors import InvalidInput, NoImage, UnsupportedMediaType
from service.pipeline import EncodedImage, decode_b64
from service.schemas import PredictParams, PredictRequest, SampleInfo

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


def uploads_from_request(params: PredictParams) -> list[Upload]:
    """Parse the request body (any of the three forms) into its images and their metadata."""
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        files = request.files.getlist("image")
        if not files:
            raise NoImage(f"multipart body has no 'image' field (fields: {sorted(request.files)})")
        check_image_count(len(files))
        samples = multipart_metadata(len(files))
        return [
            Upload(EncodedImage(file.read(), params.page),
                   _with_default_id(sample, file.filename or str(index)))
            for index, (file, sample) in enumerate(zip(files, samples))
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
                _with_default_id(SampleInfo.model_validate(instance.model_dump(include=_SAMPLE_FIELDS)), str(index)),
            )
            for index, instance in enumerate(parsed.instances)
        ]
    if mimetype in RAW_MEDIA_TYPES:
        data = request.get_data(cache=False)
        if not data:
            raise NoImage("request body is empty")
        sample = SampleInfo.model_validate(params.model_dump(include=_SAMPLE_FIELDS))
        return [Upload(EncodedImage(data, params.page), _with_default_id(sample, "0"))]
    if not mimetype and not request.content_length:
        raise NoImage("request has no body")
    raise UnsupportedMediaType(
        f"content type '{mimetype or 'none'}' is not accepted; use one of {ACCEPTED_MEDIA_TYPES}"
    )



_SAMPLE_FIELDS = set(SampleInfo.model_fields)
_SAMPLES = TypeAdapter(list[SampleInfo])


def _with_default_id(sample: SampleInfo, default: str) -> SampleInfo:
    return sample if sample.id is not None else sample.model_copy(update={"id": default})


def multipart_metadata(count: int) -> list[SampleInfo]:
    """The `metadata` part: one object per `image` part, in order (absent: ids only)."""
    raw: Any = request.form.get("metadata")
    if raw is None:
        return [SampleInfo() for _ in range(count)]
    parsed = parse_json(raw, "metadata part")
    if not isinstance(parsed, list) or len(parsed) != count:
        raise InvalidInput(f"the metadata part must be a JSON array of {count} objects, one per image part")
    return _SAMPLES.validate_python(parsed)  # a ValidationError is a 422 with pydantic's details
