"""OpenAPI 3.1 document generated from the routes and their pydantic models (/openapi.json).

Views declare what they take and answer with `@document(...)`; `build_spec` walks Flask's
url_map, so every route appears with the schemas the code actually validates against.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from flask import Flask, Response, current_app, jsonify
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service import __version__
from service.api.auth import KEYS_EXTENSION
from service.api.common import get_manager
from service.api.examples import EXAMPLES

F = TypeVar("F", bound=Callable[..., Any])

_BINARY = {"type": "string", "format": "binary"}
_REF = "#/components/schemas/{model}"


@dataclass
class Operation:
    """What one view takes and answers, for the OpenAPI document."""

    summary: str
    tag: str
    body: dict[str, type[BaseModel] | dict[str, Any]] = field(default_factory=dict)
    query: type[BaseModel] | None = None
    responses: dict[int, type[BaseModel] | dict[str, Any] | None] = field(default_factory=dict)
    response_media: str = "application/json"
    example: dict[str, Any] | None = None
    """An example of the 200 answer."""
    also: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Other media types of the 200 answer (content negotiation) and their schemas."""


def document(
    summary: str, *, tag: str, body: dict[str, type[BaseModel] | dict[str, Any]] | None = None,
    query: type[BaseModel] | None = None,
    responses: dict[int, type[BaseModel] | dict[str, Any] | None] | None = None,
    response_media: str = "application/json", example: dict[str, Any] | None = None,
    also: dict[str, dict[str, Any]] | None = None,
) -> Callable[[F], F]:
    """Attach an Operation to a view function."""

    def attach(view: F) -> F:
        view.__openapi__ = Operation(summary, tag, body or {}, query, responses or {}, response_media,  # type: ignore[attr-defined]
                                     example, also or {})
        return view

    return attach


def _path_and_parameters(rule: str, examples: dict[str, list[Any]]) -> tuple[str, list[dict[str, Any]]]:
    parameters = []
    for converter, name in re.findall(r"<(?:(\w+):)?(\w+)>", rule):
        schema: dict[str, Any] = (
            {"type": "integer", "minimum": 0} if converter == "int" else {"type": "string", "pattern": "^[^/]+$"}
        )
        if examples.get(name):
            schema["examples"] = examples[name]
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule), parameters


_OWN_BLUEPRINTS = ("predict", "health")


def _operation_id(endpoint: str, rule: str, method: str, used: set[str]) -> str:
    """Readable ids for generated SDKs: `predict`, `tfserving_predict_by_version`, `v2_infer`."""
    blueprint, _, function = endpoint.rpartition(".")
    name = function if blueprint in ("", *_OWN_BLUEPRINTS) else f"{blueprint}_{function}"
    if "<int:version>" in rule:
        name += "_by_version"
    elif "<label>" in rule:
        name += "_by_label"
    if name in used:
        name += f"_{method.lower()}"
    used.add(name)
    return name


def _schema_of(item: type[BaseModel] | dict[str, Any], refs: dict[Any, Any], mode: str) -> dict[str, Any]:
    if isinstance(item, dict):
        return item
    return dict(refs[(item, mode)])


def _media(schema: dict[str, Any], examples: dict[Any, Any], key: Any) -> dict[str, Any]:
    """A media type object, with its example when examples.py has one."""
    media: dict[str, Any] = {"schema": schema}
    if key in examples:
        media["example"] = examples[key]
    return media


def build_spec(app: Flask, examples: dict[str, list[Any]] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document for every documented route of `app`.

    `examples` gives path parameters real values (the served model names and versions), so
    clients and fuzzers start from requests that reach a model.
    """
    keys = app.extensions.get(KEYS_EXTENSION)
    operations = []
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        operation: Operation | None = getattr(view, "__openapi__", None)
        if operation is not None:
            operations.append((rule, operation))
    models: set[tuple[type[BaseModel], Literal["validation", "serialization"]]] = set()
    for _, operation in operations:
        models.update((m, "validation") for m in operation.body.values() if isinstance(m, type))
        models.update((m, "serialization") for m in operation.responses.values() if isinstance(m, type))
    refs, definitions = models_json_schema(sorted(models, key=lambda pair: (pair[0].__name__, pair[1])), ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    used_ids: set[str] = set()
    for rule, operation in sorted(operations, key=lambda pair: pair[0].rule):
        path, parameters = _path_and_parameters(rule.rule, examples or {})
        if operation.query is not None:
            query_schema = operation.query.model_json_schema()
            for name, prop in query_schema.get("properties", {}).items():
                prop = {k: v for k, v in prop.items() if k != "title"}
                parameters.append({"name": name, "in": "query", "required": name in query_schema.get("required", []),
                                   "schema": prop})
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            entry: dict[str, Any] = {
                "summary": operation.summary,
                "operationId": _operation_id(rule.endpoint, rule.rule, method, used_ids),
                "tags": [operation.tag],
                "parameters": parameters,
                "responses": {},
            }
            samples = EXAMPLES.get(rule.endpoint, {})
            if operation.body:
                entry["requestBody"] = {
                    "required": True,
                    "content": {media: _media(_schema_of(model, refs, "validation"), samples.get("request", {}), media)
                                for media, model in operation.body.items()},
                }
            # Gunicorn itself refuses an over-long request line before the app sees it.
            entry["responses"]["414"] = {"description": "request line too long (refused by Gunicorn)"}
            for status, model in sorted(operation.responses.items()):
                response: dict[str, Any] = {"description": _STATUS_TEXT.get(status, "response")}
                if model is not None:
                    response["content"] = {operation.response_media if status < 400 else "application/json":
                                           _media(_schema_of(model, refs, "serialization"),
                                                  samples.get("responses", {}), status)}
                if status == 200:
                    content = response.setdefault("content", {})
                    if operation.example is not None and operation.response_media in content:
                        content[operation.response_media].setdefault("example", operation.example)
                    content.update({media: {"schema": schema} for media, schema in operation.also.items()})
                entry["responses"][str(status)] = response
            if keys is not None and keys.is_public(rule.rule):
                entry["security"] = []  # public even with keys configured
            paths.setdefault(path, {})[method.lower()] = entry
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "CPE serving",
            "version": __version__,
            "description": "Serves TensorFlow SavedModel image classifiers (influenza CPE microscopy): "
                           "its own /predict API, TF Serving REST v1 and the Open Inference Protocol v2.",
        },
        "paths": paths,
        "components": {"schemas": definitions.get("$defs", {}), "securitySchemes": SECURITY_SCHEMES},
    }
    if keys is not None:  # Swagger UI then offers "Authorize" and sends the key with "try it out"
        spec["security"] = [{name: []} for name in SECURITY_SCHEMES]
    return spec


#: The two ways a request presents an API key (service/api_keys.py).
SECURITY_SCHEMES: dict[str, Any] = {
    "bearerKey": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


_STATUS_TEXT = {
    200: "OK", 400: "invalid input", 404: "unknown model or version", 413: "too large",
    406: "no acceptable representation (e.g. one PNG asked for several images)",
    415: "unsupported media type", 422: "validation failed", 500: "model failure", 502: "backend error",
    501: "not implemented for this model version (explain_unavailable)",
    503: "not ready, overloaded (Retry-After) or backend unavailable", 504: "timed out",
}

IMAGE_BODY = {"image/tiff": _BINARY, "image/png": _BINARY, "image/jpeg": _BINARY}
MULTIPART_IMAGES = {
    "type": "object",
    "properties": {"image": {"type": "array", "items": _BINARY}},
    "required": ["image"],
}
TEXT = {"type": "string"}
PNG = _BINARY

#: POST /explain's answer for one image (the map shortened to 3 of its 14 rows, the PNG elided).
EXPLAIN_EXAMPLE: dict[str, Any] = {
    "request_id": "9f1c2b7e", "model": "cpe_cnn", "model_version": 2,
    "predictions": [{
        "id": "field.tif", "label": "infected", "probabilities": {"uninfected": 0.012, "infected": 0.988},
        "model": "cpe_cnn", "model_version": 2,
        "explanation": {
            "method": "grad-cam", "target_class": "infected", "log_odds": 4.44, "grid": [14, 19],
            "map": [[0.0, 0.0, 0.12, 0.4, 0.61, 0.35, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                    [0.0, 0.08, 0.55, 1.0, 0.87, 0.42, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                    [0.0, 0.0, 0.31, 0.66, 0.52, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]],
            "cell_origin_px": [112.5, 112.5], "cell_stride_px": [60.0, 60.0],
            "overlay_png": "iVBORw0KGgoAAAANSUhEUgAAAqgAAAIACAIAAAD...",
        },
    }],
}


def served_examples() -> dict[str, list[Any]]:
    """The served model names and versions, as examples for the path parameters."""
    manager = get_manager()
    names = manager.model_names()
    versions = sorted({s.version for name in names for s in manager.versions(name) if s.version is not None})
    return {"name": names, "version": versions}


def openapi_view() -> Response:
    """GET /openapi.json."""
    return jsonify(build_spec(current_app, served_examples()))
