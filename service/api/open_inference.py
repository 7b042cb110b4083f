"""The Open Inference Protocol v2 REST API (KServe, Triton, MLServer), with the binary
tensor data extension so large images need not travel as JSON numbers.

Inputs: one tensor named as the model's input, either pixels (FP32, UINT8 or UINT16, shape
[n, H, W] or [n, H, W, C], any H and W) or encoded PNG/JPEG/TIFF images (BYTES, shape [n]).
Outputs: `probabilities` (FP32 [n, classes]) and `label` (BYTES [n], the class names).
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from service import __version__
from service.api.binary_tensors import (
    HEADER_LENGTH,
    encode_bytes,
    images_from_tensor,
    split_body,
    tensor_binary,
)
from service.api.common import begin_inference, check_image_count, get_manager, run_inference
from service.api.errors import answers_plain_errors
from service.api.openapi import document
from service.api.predict import provenance
from service.errors import InvalidInput, ModelNotFound
from service.pipeline import InferenceResult, ModelRoute
from service.schemas import (
    V2Error,
    V2InferenceRequest,
    V2InferenceResponse,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2RequestOutput,
    V2ServerMetadata,
)

bp = answers_plain_errors(Blueprint("v2", __name__, url_prefix="/v2"))

SERVER_NAME = "cpe-serving"
SERVER_VERSION = __version__
LABEL_OUTPUT = "label"


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


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<int:version>/infer")
@document(
    "Inference (JSON; binary tensor data extension with Inference-Header-Content-Length)",
    tag="inference-v2", body={"application/json": V2InferenceRequest},
    responses={status: (V2InferenceResponse if status == 200 else V2Error)
               for status in (200, 400, 404, 413, 500, 502, 503, 504)},
)
def infer(name: str, version: int | None = None) -> Response:
    route = ModelRoute(name, version)
    header, tail = split_body(request.get_data(cache=False), request.headers.get(HEADER_LENGTH))
    parsed = V2InferenceRequest.model_validate(header)
    servable = begin_inference(route)
    info = servable.info
    assert info is not None
    [tensor] = parsed.inputs
    if tensor.name != info.input_key:
        raise InvalidInput(f"unexpected inference input '{tensor.name}' for model '{name}' (expects '{info.input_key}')")
    binary, _ = tensor_binary(tensor, tail, 0)
    check_image_count(tensor.shape[0])
    images = images_from_tensor(tensor, binary)
    known_outputs = {info.output_key, LABEL_OUTPUT}
    requested = parsed.outputs or [V2RequestOutput(name=key) for key in (info.output_key, LABEL_OUTPUT)]
    for output in requested:
        if output.name not in known_outputs:
            raise InvalidInput(f"unexpected inference output '{output.name}' for model '{name}'")
    result = run_inference(images, route)
    binary_default = bool((parsed.parameters or {}).get("binary_data_output", False))
    return _respond(parsed, requested, result, binary_default)


def _respond(
    parsed: V2InferenceRequest, requested: list[V2RequestOutput], result: InferenceResult, binary_default: bool,
) -> Response:
    probabilities = result.probabilities
    labels = [label or "" for label in result.labels]  # None only under ?qc=reject, a /predict option
    outputs, chunks = [], []
    for output in requested:
        if output.name == LABEL_OUTPUT:
            entry: dict[str, Any] = {"name": LABEL_OUTPUT, "datatype": "BYTES", "shape": [len(labels)]}
            raw, values = encode_bytes(labels), list[Any](labels)
        else:
            entry = {"name": output.name, "datatype": "FP32", "shape": list(probabilities.shape)}
            raw, values = probabilities.astype("<f4").tobytes(), probabilities.reshape(-1).tolist()
        if (output.parameters or {}).get("binary_data", binary_default):
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = values
        outputs.append(entry)
    body: dict[str, Any] = {
        "model_name": result.info.name, "model_version": str(result.info.version), "outputs": outputs,
        # The protocol's free-form parameters carry the answer's provenance.
        "parameters": provenance(result).model_dump(exclude_none=True),
    }
    if parsed.id is not None:
        body["id"] = parsed.id
    header = json.dumps(body).encode()
    if not chunks:
        return Response(header, mimetype="application/json")
    response = Response(header + b"".join(chunks), mimetype="application/octet-stream")
    response.headers[HEADER_LENGTH] = str(len(header))
    return response

