"""OpenAPI 3.1 document generated from the routes and their pydantic models, plus /docs.

Views declare what they take and answer with `@document(...)`; `build_spec` walks Flask's
url_map, so every route appears with the schemas the code actually validates against.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from flask import Flask, Response, current_app, jsonify
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service import __version__
from service.api.common import get_manager

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


def document(
    summary: str, *, tag: str, body: dict[str, type[BaseModel] | dict[str, Any]] | None = None,
    query: type[BaseModel] | None = None,
    responses: dict[int, type[BaseModel] | dict[str, Any] | None] | None = None,
    response_media: str = "application/json",
) -> Callable[[F], F]:
    """Attach an Operation to a view function."""

    def attach(view: F) -> F:
        view.__openapi__ = Operation(summary, tag, body or {}, query, responses or {}, response_media)  # type: ignore[attr-defined]
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


def build_spec(app: Flask, examples: dict[str, list[Any]] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document for every documented route of `app`.

    `examples` gives path parameters real values (the served model names and versions), so
    clients and fuzzers start from requests that reach a model.
    """
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
            if operation.body:
                entry["requestBody"] = {
                    "required": True,
                    "content": {media: {"schema": _schema_of(model, refs, "validation")}
                                for media, model in operation.body.items()},
                }
            # Gunicorn itself refuses an over-long request line before the app sees it.
            entry["responses"]["414"] = {"description": "request line too long (refused by Gunicorn)"}
            for status, model in sorted(operation.responses.items()):
                response: dict[str, Any] = {"description": _STATUS_TEXT.get(status, "response")}
                if model is not None:
                    response["content"] = {operation.response_media if status < 400 else "application/json":
                                           {"schema": _schema_of(model, refs, "serialization")}}
                entry["responses"][str(status)] = response
            paths.setdefault(path, {})[method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "CPE serving",
            "version": __version__,
            "description": "Serves TensorFlow SavedModel image classifiers (influenza CPE microscopy): "
                           "its own /predict API, TF Serving REST v1 and the Open Inference Protocol v2.",
        },
        "paths": paths,
        "components": {"schemas": definitions.get("$defs", {})},
    }


_STATUS_TEXT = {
    200: "OK", 400: "invalid input", 404: "unknown model or version", 413: "too large",
    415: "unsupported media type", 422: "validation failed", 500: "model failure", 502: "backend error",
    503: "not ready, overloaded (Retry-After) or backend unavailable", 504: "timed out",
}

IMAGE_BODY = {"image/tiff": _BINARY, "image/png": _BINARY, "image/jpeg": _BINARY}
MULTIPART_IMAGES = {
    "type": "object",
    "properties": {"image": {"type": "array", "items": _BINARY}},
    "required": ["image"],
}
TEXT = {"type": "string"}


def _served_examples() -> dict[str, list[Any]]:
    manager = get_manager()
    names = manager.model_names()
    versions = sorted({s.version for name in names for s in manager.versions(name) if s.version is not None})
    return {"name": names, "version": versions}


def openapi_view() -> Response:
    """GET /openapi.json."""
    return jsonify(build_spec(current_app, _served_examples()))


def docs_view() -> Response:
    """GET /docs: the API, rendered from the same document (no external scripts needed)."""
    spec = build_spec(current_app, _served_examples())
    rows = []
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            codes = ", ".join(operation["responses"])
            media = ", ".join(operation.get("requestBody", {}).get("content", {}))
            rows.append(
                f"<tr><td>{html.escape(operation['tags'][0])}</td><td><code>{method.upper()}</code></td>"
                f"<td><code>{html.escape(path)}</code></td><td>{html.escape(operation['summary'])}</td>"
                f"<td>{html.escape(media)}</td><td>{codes}</td></tr>"
            )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>CPE serving API</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{border-bottom:1px solid #ddd;padding:4px 8px;"
        "text-align:left}code{font-size:0.95em}</style></head><body>"
        "<h1>CPE serving API</h1><p>Machine-readable: <a href='/openapi.json'>/openapi.json</a> "
        "(OpenAPI 3.1, generated from the code's pydantic models).</p>"
        "<table><tr><th>family</th><th>method</th><th>path</th><th>what</th><th>request body</th>"
        "<th>responses</th></tr>" + "".join(rows) + "</table></body></html>"
    )
    return Response(page, mimetype="text/html")
