"""TensorFlow Serving's REST API v1, with its paths, JSON shapes and `{"error": "..."}` errors.

    GET  /v1/models/{name}[/versions/{v} | /labels/{l}]            -> model_version_status
    GET  /v1/models/{name}[/versions/{v} | /labels/{l}]/metadata   -> signature_def
    POST /v1/models/{name}[/versions/{v} | /labels/{l}]:predict    -> predictions / outputs

Instances are either numeric pixel arrays (TF Serving's plain form; any size, resized like
every other input) or `{"b64": ...}` encoded PNG/JPEG/TIFF images, the form microscopy clients
use. Clients written for TF Serving keep working unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flask import Blueprint, Response, g, jsonify
from google.protobuf import json_format

from service.api.common import begin_inference, check_image_count, get_manager, read_json_body, run_inference
from service.api.errors import answers_plain_errors
from service.api.openapi import document
from service.errors import InvalidInput, redact_paths
from service.models import ModelInfo, Servable
from service.pipeline import EncodedImage, ImageInput, ModelRoute, decode_b64
from service.schemas import (
    TfServingError,
    TfServingMetadataResponse,
    TfServingPredictRequest,
    TfServingPredictResponse,
    TfServingStatusResponse,
)

bp = answers_plain_errors(Blueprint("tfserving", __name__, url_prefix="/v1/models"), unmatched_prefix="/v1")


# --- status and metadata ----------------------------------------------------------------------


def _status_entry(servable: Servable) -> dict[str, Any]:
    return {
        "version": str(servable.version),
        "state": servable.state.value,
        "status": {
            "error_code": "OK" if servable.error is None else "UNKNOWN",
            "error_message": redact_paths(servable.error or ""),
        },
    }


def _selected(name: str, version: int | None, label: str | None) -> list[Servable]:
    manager = get_manager()
    if version is None and label is None:
        return manager.versions(name)
    return [manager.get(name, version, label)]


@bp.get("/<name>")
@bp.get("/<name>/versions/<int:version>")
@bp.get("/<name>/labels/<label>")
@document("TF Serving GetModelStatus", tag="tfserving-v1",
          responses={200: TfServingStatusResponse, 404: TfServingError})
def model_status(name: str, version: int | None = None, label: str | None = None) -> Response:
    """GetModelStatus over REST."""
    g.model = name
    if version is not None:
        matches = [s for s in get_manager().versions(name) if s.version == version]
        if not matches:
            get_manager().get(name, version)  # raises the 404
        return jsonify({"model_version_status": [_status_entry(s) for s in matches]})
    return jsonify({"model_version_status": [_status_entry(s) for s in _selected(name, version, label)]})


def signature_def_map(info: ModelInfo) -> dict[str, Any]:
    """The SignatureDef map as TF Serving's metadata API returns it (from saved_model.pb when
    the version is on this machine, else rebuilt from the signature the backend reported)."""
    saved_model_pb = info.path / "saved_model.pb" if info.path is not None else None
    if saved_model_pb is not None and saved_model_pb.is_file():
        from tensorflow.core.protobuf import saved_model_pb2

        saved_model = saved_model_pb2.SavedModel.FromString(saved_model_pb.read_bytes())
        return {
            key: json_format.MessageToDict(signature, preserving_proto_field_name=True)
            for key, signature in saved_model.meta_graphs[0].signature_def.items()
            if not key.startswith("__")
        }

    def tensor(key: str, shape: list[int]) -> dict[str, Any]:
        return {"dtype": "DT_FLOAT", "name": f"{info.signature_name}_{key}:0",
                "tensor_shape": {"dim": [{"size": str(side), "name": ""} for side in shape], "unknown_rank": False}}

    return {
        info.signature_name: {
            "inputs": {info.input_key: tensor(info.input_key, [-1, info.height, info.width, info.channels])},
            "outputs": {info.output_key: tensor(info.output_key, [-1, len(info.classes)])},
            "method_name": "tensorflow/serving/predict",
        }
    }


@bp.get("/<name>/metadata")
@bp.get("/<name>/versions/<int:version>/metadata")
@bp.get("/<name>/labels/<label>/metadata")
@document("TF Serving GetModelMetadata (signature_def)", tag="tfserving-v1",
          responses={200: TfServingMetadataResponse, 404: TfServingError, 503: TfServingError})
def model_metadata(name: str, version: int | None = None, label: str | None = None) -> Response:
    """GetModelMetadata over REST (signature_def only, as TF Serving)."""
    g.model = name
    servable = get_manager().get(name, version, label)
    assert servable.info is not None
    return jsonify({
        "model_spec": {"name": name, "signature_name": "", "version": str(servable.version)},
        "metadata": {"signature_def": {"signature_def": signature_def_map(servable.info)}},
    })


# --- predict ----------------------------------------------------------------------------------


def _image_input(value: Any, input_key: str, where: str) -> ImageInput:
    """One instance -> encoded bytes or a pixel array."""
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return EncodedImage(decode_b64(value["b64"], f"{where}: b64 value"))
        if input_key in value and len(value) == 1:
            return _image_input(value[input_key], input_key, where)
        raise InvalidInput(f"{where}: expected {{'b64': ...}} or {{'{input_key}': ...}}, got keys {sorted(value)}")
    try:
        pixels = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError) as err:
        raise InvalidInput(f"{where}: not a numeric array ({err})") from err
    if pixels.ndim == 3 and pixels.shape[2] not in (1, 3, 4) and pixels.shape[0] in (1, 3, 4):
        raise InvalidInput(f"{where}: channels must be last (H, W, C); got shape {list(pixels.shape)}")
    return pixels


def _columnar_values(inputs: Any, input_key: str) -> list[Any]:
    if isinstance(inputs, dict) and "b64" not in inputs:
        if set(inputs) != {input_key}:
            raise InvalidInput(f"inputs must name exactly the signature's input '{input_key}'; got {sorted(inputs)}")
        inputs = inputs[input_key]
    if isinstance(inputs, dict):  # a single b64 image
        return [inputs]
    if not isinstance(inputs, list):
        raise InvalidInput("inputs must be a list of images")
    return inputs


@bp.post("/<name>:predict")
@bp.post("/<name>/versions/<int:version>:predict")
@bp.post("/<name>/labels/<label>:predict")
@document(
    "TF Serving Predict, row or columnar; numeric instances or {b64} images", tag="tfserving-v1",
    body={"application/json": TfServingPredictRequest},
    responses={status: (TfServingPredictResponse if status == 200 else TfServingError)
               for status in (200, 400, 404, 413, 500, 502, 503, 504)},
)
def predict(name: str, version: int | None = None, label: str | None = None) -> Response:
    """Predict in row or columnar form; answers in the same form."""
    route = ModelRoute(name, version, label)
    try:
        body = read_json_body()
    except InvalidInput as err:
        raise InvalidInput(f"JSON Parse error: {err.message}") from err
    if not isinstance(body, dict):
        raise InvalidInput("JSON Value: body is not a JSON object")
    parsed = TfServingPredictRequest.model_validate(body)
    servable = begin_inference(route)
    info = servable.info
    assert info is not None
    if parsed.signature_name not in (None, "", info.signature_name):
        raise InvalidInput(f'Serving signature name: "{parsed.signature_name}" not found in signature def')
    row_format = parsed.instances is not None
    values = parsed.instances if row_format else _columnar_values(parsed.inputs, info.input_key)
    if not values:
        raise InvalidInput("no instances in the request")
    check_image_count(len(values))
    images = [_image_input(value, info.input_key, f"instance {i}") for i, value in enumerate(values)]
    rows = run_inference(images, route).probabilities.tolist()
    return jsonify({"predictions": rows} if row_format else {"outputs": rows})
