"""An example request and answer for every documented view, placed in the OpenAPI document.

Swagger UI pre-fills "try it out" with the request examples and shows the answers; schemathesis
sends the request examples first. tests/integration/test_openapi.py validates each one against
its schema, so an example cannot drift from the code's models.
"""

from __future__ import annotations

from typing import Any

# A 16x16 8-bit gray PNG: small enough to read, large enough to pass the minimum side.
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAAAAAA6mKC9AAAAEUlEQVR42mNk4EAFTBwjWgAASdQIGDOfFtMAAAAASUVORK5CYII="

_PROBABILITIES = {"cpe": 0.91, "no_cpe": 0.09}
_ERROR = {"error": {"code": "undecodable_image", "message": "bytes are not a PNG, JPEG or TIFF image"}}
_JOB: dict[str, Any] = {"id": "4f6b1d2e9c0a4b7d8e3f5a6c7b8d9e0f", "state": "queued", "model": "cpe_cnn", "version": None,
        "qc": "warn", "tiling": "auto", "created_at": 1764554400.0, "started_at": None, "finished_at": None,
        "progress": {"done": 0, "total": 2, "failed": 0, "images_per_s": None, "eta_s": None},
        "errors": [], "links": {"self": "/jobs/4f6b1d2e9c0a4b7d8e3f5a6c7b8d9e0f",
                                "results": "/jobs/4f6b1d2e9c0a4b7d8e3f5a6c7b8d9e0f/results"}}

#: endpoint -> {"request": {media: example}, "responses": {status: example}}
EXAMPLES: dict[str, dict[str, dict[Any, Any]]] = {
    "health.healthz": {"responses": {200: {"status": "alive"}}},
    "health.readyz": {"responses": {200: {"status": "ready", "models": {"cpe_cnn": [2]}},
                                    503: {"status": "not_ready", "reason": "loading"}}},
    "health.status": {"responses": {200: {
        "ready": True, "backend": "tensorflow_local", "default_model": "cpe_cnn",
        "models": {"cpe_cnn": {"versions": [{"version": 2, "state": "AVAILABLE"}]}},
    }}},
    "metrics": {"responses": {200: "# TYPE serving_requests_total counter\n"
                                   'serving_requests_total{model="cpe_cnn",route="/predict",code="2xx"} 42.0\n'}},
    "predict.predict": {
        "request": {"application/json": {"instances": [{"b64": PNG_B64, "plate": "P1", "well": "B07"}]}},
        "responses": {
            200: {
                "request_id": "6f1c0c5e2b8a4d0f9a51f0e2c9d3b7aa", "model": "cpe_cnn", "model_version": 2,
                "predictions": [{"plate": "P1", "well": "B07", "label": "cpe", "probabilities": _PROBABILITIES,
                                 "qc": {"status": "pass", "reasons": []}, "model": "cpe_cnn", "model_version": 2}],
            },
            400: _ERROR,
        },
    },
    "predict.explain": {
        "request": {"application/json": {"instances": [{"b64": PNG_B64, "plate": "P1", "well": "B07"}]}},
        "responses": {400: _ERROR},
    },
    "jobs.submit_job": {
        "request": {"application/json": {"items": [
            {"path": "FLU-T01/B07_s1.tif", "plate": "FLU-T01", "well": "B07", "site": 1},
            {"path": "FLU-T01/B07_s2.tif", "plate": "FLU-T01", "well": "B07", "site": 2}]}},
        "responses": {202: _JOB, 400: {"error": {"code": "invalid_path", "message": "path must be relative "
                                                 "to the input root, without '..'"}}},
    },
    "jobs.job_status": {"responses": {200: {**_JOB, "state": "running", "started_at": 1764554401.2,
                                            "progress": {"done": 1, "total": 2, "failed": 0,
                                                         "images_per_s": 4.1, "eta_s": 0.2}}}},
    "jobs.cancel_job": {"responses": {200: {**_JOB, "state": "cancelled", "finished_at": 1764554402.0}}},
    "jobs.job_results": {"responses": {200: {
        "job": {**_JOB, "state": "succeeded", "started_at": 1764554401.2, "finished_at": 1764554401.7,
                "progress": {"done": 2, "total": 2, "failed": 0, "images_per_s": 4.0, "eta_s": 0.0}},
        "results": [{"source": "FLU-T01/B07_s1.tif", "plate": "FLU-T01", "well": "B07", "site": 1,
                     "label": "cpe", "probabilities": _PROBABILITIES}],
        "wells": [{"plate": "FLU-T01", "well": "B07", "images": 2, "positive": 1}],
        "plates": [{"plate": "FLU-T01", "wells": 1}],
    }}},
    "tfserving.model_status": {"responses": {200: {"model_version_status": [
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}}},
    "tfserving.model_metadata": {"responses": {200: {
        "model_spec": {"name": "cpe_cnn", "signature_name": "", "version": "2"},
        "metadata": {"signature_def": {"signature_def": {"serving_default": {"method_name": "tensorflow/serving/predict"}}}},
    }}},
    "tfserving.predict": {
        "request": {"application/json": {"instances": [{"b64": PNG_B64}]}},
        "responses": {200: {"predictions": [[0.09, 0.91]]}, 400: {"error": "bytes are not a PNG, JPEG or TIFF image"}},
    },
    "v2.server_metadata": {"responses": {200: {"name": "cpe-serving", "version": "0.2.0",
                                               "extensions": ["binary_tensor_data"]}}},
    "v2.server_live": {"responses": {200: {"live": True}}},
    "v2.server_ready": {"responses": {200: {"ready": True}, 503: {"ready": False}}},
    "v2.model_metadata": {"responses": {200: {
        "name": "cpe_cnn", "versions": ["2"], "platform": "tensorflow_savedmodel",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
                    {"name": "label", "datatype": "BYTES", "shape": [-1]}],
        "parameters": {"classes": ["no_cpe", "cpe"]},
    }}},
    "v2.model_ready": {"responses": {200: {"name": "cpe_cnn", "ready": True}}},
    "v2.infer": {
        "request": {"application/json": {"id": "plate-1", "inputs": [
            {"name": "image", "shape": [1], "datatype": "BYTES", "data": [PNG_B64]}]}},
        "responses": {200: {
            "model_name": "cpe_cnn", "model_version": "2", "id": "plate-1",
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "data": [0.09, 0.91]},
                        {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["cpe"]}],
        }, 400: {"error": "BYTES element 0 (JSON form: base64 images): not valid base64"}},
    },
}
