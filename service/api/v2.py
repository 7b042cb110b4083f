"""The Open Inference Protocol v2 REST API (KServe, Triton, MLServer), with the binary
tensor data extension so large images need not travel as JSON numbers.

Inputs: one tensor named as the model's input, either pixels (FP32, UINT8 or UINT16, shape
[n, H, W] or [n, H, W, C], any H and W) or encoded PNG/JPEG/TIFF images (BYTES, shape [n]).
Outputs: `probabilities` (FP32 [n, classes]) and `label` (BYTES [n], the class names).
"""

from __future__ import annotations

import json
import struct
import time
from typing import Any

import numpy as np
from flask import Blueprint, Response, g, jsonify, request
from numpy.typing import NDArray

from service.codecs.images import ImageLimits
from service.errors import InvalidInput, ModelNotFound
from service.inference import ImageInput, check_image_count, decode_b64, label_and_observe, prepare_inputs
from service.models import get_manager
from service.openapi import document
from service.schemas import (
    V2Error,
    V2InferenceRequest,
    V2InferenceResponse,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2RequestInput,
    V2RequestOutput,
    V2ServerMetadata,
)
from service.servable import Servable

bp = Blueprint("v2", __name__, url_prefix="/v2")

SERVER_NAME = "cpe-serving"
SERVER_VERSION = "0.1.0"
HEADER_LENGTH = "Inference-Header-Content-Length"
LABEL_OUTPUT = "label"
_NUMPY_TYPES = {"FP32": np.float32, "UINT8": np.uint8, "UINT16": np.uint16}


# --- server and model metadata -------------------------------------------------------------------


@bp.get("")
@document("Server metadata", tag="inference-v2", responses={200: V2ServerMetadata})
def server_metadata() -> Response:
    return jsonify({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]})


@bp.get("/health/live")
@document("Server live", tag="inference-v2", responses={200: V2Live})
def server_live() -> Response:
    return jsonify({"live": True})


@bp.get("/health/ready")
@document("Server ready", tag="inference-v2", responses={200: V2Ready, 503: V2Ready})
def server_ready() -> tuple[Response, int]:
    ready = get_manager().ready
    return jsonify({"ready": ready}), 200 if ready else 503


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<int:version>")
@document("Model metadata", tag="inference-v2",
          responses={200: V2ModelMetadata, 404: V2Error, 503: V2Error})
def model_metadata(name: str, version: int | None = None) -> Response:
    g.model = name
    manager = get_manager()
    servable = manager.get(name, version)
    info = servable.info
    assert info is not None
    return jsonify({
        "name": name,
        "versions": [str(s.version) for s in manager.versions(name) if s.available],
        "platform": "tensorflow_savedmodel",
        "inputs": [{"name": info.input_key, "datatype": "FP32", "shape": [-1, info.height, info.width, info.channels]}],
        "outputs": [
            {"name": info.output_key, "datatype": "FP32", "shape": [-1, len(info.classes) or -1]},
            {"name": LABEL_OUTPUT, "datatype": "BYTES", "shape": [-1]},
        ],
        "parameters": {"classes": list(info.classes), "accepts": ["FP32", "UINT8", "UINT16", "BYTES (encoded image)"]},
    })


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<int:version>/ready")
@document("Model ready", tag="inference-v2", responses={200: V2ModelReady, 404: V2Error, 503: V2ModelReady})
def model_ready(name: str, version: int | None = None) -> tuple[Response, int]:
    g.model = name
    servables = get_manager().versions(name)
    if version is not None:
        servables = [s for s in servables if s.version == version]
        if not servables:
            raise ModelNotFound(f"model '{name}' has no version {version}")
    ready = any(s.available for s in servables)
    return jsonify({"name": name, "ready": ready}), 200 if ready else 503


# --- inference ----------------------------------------------------------------------------------


def _split_body() -> tuple[dict[str, Any], bytes]:
    """JSON header and binary tail, per the binary tensor data extension."""
    body = request.get_data(cache=False)
    header_length = request.headers.get(HEADER_LENGTH)
    if header_length is None:
        header, tail = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError as err:
            raise InvalidInput(f"{HEADER_LENGTH} must be an integer") from err
        if not 0 < length <= len(body):
            raise InvalidInput(f"{HEADER_LENGTH} {length} does not fit a body of {len(body)} bytes")
        header, tail = body[:length], body[length:]
    try:
        parsed = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidInput(f"inference header is not valid JSON: {err}") from err
    if not isinstance(parsed, dict):
        raise InvalidInput("inference header must be a JSON object")
    return parsed, tail


def _bytes_elements(raw: bytes, count: int) -> list[bytes]:
    """BYTES tensor in binary form: each element is a 4-byte little-endian length + bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput("truncated BYTES element length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise InvalidInput("BYTES element runs past the binary data")
        elements.append(raw[offset:offset + size])
        offset += size
    if len(elements) != count:
        raise InvalidInput(f"BYTES tensor holds {len(elements)} elements, shape says {count}")
    return elements


def _images_from_tensor(tensor: V2RequestInput, binary: bytes | None) -> list[ImageInput]:
    shape = tensor.shape
    if any(side <= 0 for side in shape):
        raise InvalidInput(f"shape {shape} has a non-positive dimension")
    if tensor.datatype == "BYTES":
        if len(shape) != 1:
            raise InvalidInput(f"a BYTES input holds encoded images, shape [n]; got {shape}")
        if binary is not None:
            encoded = _bytes_elements(binary, shape[0])
        else:
            if not isinstance(tensor.data, list) or len(tensor.data) != shape[0]:
                raise InvalidInput("BYTES data must be a list of base64 strings, one per image")
            encoded = [decode_b64(item, f"BYTES element {i} (JSON form: base64 images)")
                       for i, item in enumerate(tensor.data)]
        return [(data, 0) for data in encoded]
    if len(shape) not in (3, 4):
        raise InvalidInput(f"pixel inputs have shape [n, H, W] or [n, H, W, C]; got {shape}")
    dtype = _NUMPY_TYPES[tensor.datatype]
    expected = int(np.prod(shape))
    if binary is not None:
        if len(binary) != expected * np.dtype(dtype).itemsize:
            raise InvalidInput(f"binary_data_size {len(binary)} does not match shape {shape} of {tensor.datatype}")
        pixels = np.frombuffer(binary, dtype=dtype).reshape(shape)
    else:
        try:
            pixels = np.asarray(tensor.data, dtype=dtype).reshape(shape)
        except (ValueError, TypeError) as err:
            raise InvalidInput(f"data does not fit shape {shape} of {tensor.datatype}: {err}") from err
    return list(pixels)


def _tensor_binary(tensor: V2RequestInput, tail: bytes, offset: int) -> tuple[bytes | None, int]:
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        return None, offset
    if not isinstance(size, int) or size < 0 or offset + size > len(tail):
        raise InvalidInput(f"binary_data_size {size} runs past the {len(tail)} bytes of binary data")
    return tail[offset:offset + size], offset + size


def _encode_bytes(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<int:version>/infer")
@document(
    "Inference (JSON; binary tensor data extension with Inference-Header-Content-Length)",
    tag="inference-v2", body={"application/json": V2InferenceRequest},
    responses={status: (V2InferenceResponse if status == 200 else V2Error)
               for status in (200, 400, 404, 413, 500, 502, 503, 504)},
)
def infer(name: str, version: int | None = None) -> Response:
    deadline = time.monotonic()
    g.model = name
    manager = get_manager()
    settings = manager.settings
    deadline += settings.request_timeout_s
    header, tail = _split_body()
    parsed = V2InferenceRequest.model_validate(header)
    servable: Servable = manager.get(name, version)
    info = servable.info
    assert info is not None
    [tensor] = parsed.inputs
    if tensor.name != info.input_key:
        raise InvalidInput(f"unexpected inference input '{tensor.name}' for model '{name}' (expects '{info.input_key}')")
    binary, _ = _tensor_binary(tensor, tail, 0)
    check_image_count(tensor.shape[0], settings.max_images_per_request)
    images = _images_from_tensor(tensor, binary)
    g.images = len(images)
    known_outputs = {info.output_key, LABEL_OUTPUT}
    requested = parsed.outputs or [V2RequestOutput(name=key) for key in (info.output_key, LABEL_OUTPUT)]
    for output in requested:
        if output.name not in known_outputs:
            raise InvalidInput(f"unexpected inference output '{output.name}' for model '{name}'")
    limits = ImageLimits(settings.max_image_pixels, settings.min_image_side_px)
    probabilities, used, g.batch_ids = manager.infer(
        lambda model: prepare_inputs(images, model, limits),
        count=len(images), name=name, version=version, deadline=deadline,
    )
    labels = label_and_observe(probabilities, used)
    binary_default = bool((parsed.parameters or {}).get("binary_data_output", False))
    return _respond(parsed, requested, probabilities, labels, used.name, used.version, binary_default)


def _respond(
    parsed: V2InferenceRequest, requested: list[V2RequestOutput], probabilities: NDArray[np.float32],
    labels: list[str], model: str, version: int, binary_default: bool,
) -> Response:
    outputs, chunks = [], []
    for output in requested:
        if output.name == LABEL_OUTPUT:
            entry: dict[str, Any] = {"name": LABEL_OUTPUT, "datatype": "BYTES", "shape": [len(labels)]}
            raw, values = _encode_bytes(labels), list[Any](labels)
        else:
            entry = {"name": output.name, "datatype": "FP32", "shape": list(probabilities.shape)}
            raw, values = probabilities.astype("<f4").tobytes(), probabilities.reshape(-1).tolist()
        if (output.parameters or {}).get("binary_data", binary_default):
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = values
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": model, "model_version": str(version), "outputs": outputs}
    if parsed.id is not None:
        body["id"] = parsed.id
    header = json.dumps(body).encode()
    if not chunks:
        return Response(header, mimetype="application/json")
    response = Response(header + b"".join(chunks), mimetype="application/octet-stream")
    response.headers[HEADER_LENGTH] = str(len(header))
    return response

