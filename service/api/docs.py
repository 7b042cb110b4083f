"""/docs: Swagger UI over the service's own /openapi.json, from assets a Python package ships.

Labs run air-gapped, so nothing is fetched from a CDN: the page, its script and stylesheet are
served from `flask_swagger_ui`'s bundled Swagger UI 5 distribution (5.x reads OpenAPI 3.1), and
the validator badge (an image from validator.swagger.io) is switched off. Without JavaScript the
page still lists every operation in a plain table.
"""

from __future__ import annotations

import html
import json
from importlib.resources import files

from flask import Flask, Response, abort, current_app, send_from_directory

from service.api.openapi import build_spec, served_examples

ASSETS_PATH = "/docs/assets"
# The files the page loads; nothing else of the package's directory is served.
_ASSETS = frozenset({"swagger-ui.css", "index.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js",
                     "favicon-32x32.png", "favicon-16x16.png"})

_CONFIG = {
    "url": "/openapi.json",
    "dom_id": "#swagger-ui",
    "deepLinking": True,
    "tryItOutEnabled": True,
    "displayOperationId": True,
    "defaultModelsExpandDepth": 0,
    # NOTE: the default draws a badge fetched from validator.swagger.io: a request off the machine.
    "validatorUrl": None,
}

# A separate script rather than an inline one: a Content-Security-Policy of `script-src 'self'`
# in front of the service keeps working.
_INITIALIZER = (
    "window.onload = function () {\n"
    f"  var config = {json.dumps(_CONFIG)};\n"
    "  config.presets = [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset];\n"
    "  config.layout = 'StandaloneLayout';\n"
    "  window.ui = SwaggerUIBundle(config);\n"
    "};\n"
)


def _asset_dir() -> str:
    return str(files("flask_swagger_ui") / "dist")


def _operation_rows() -> str:
    """The operations as table rows, for readers without JavaScript (and for curl)."""
    spec = build_spec(current_app, served_examples())
    rows = []
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            rows.append(
                f"<tr><td>{html.escape(operation['tags'][0])}</td><td><code>{method.upper()}</code></td>"
                f"<td><code>{html.escape(path)}</code></td><td>{html.escape(operation['summary'])}</td>"
                f"<td>{', '.join(operation['responses'])}</td></tr>"
            )
    return "".join(rows)


def docs_view() -> Response:
    """GET /docs: Swagger UI, with a table of the operations inside <noscript>."""
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>CPE serving API</title>"
        f"<link rel='stylesheet' href='{ASSETS_PATH}/swagger-ui.css'>"
        f"<link rel='stylesheet' href='{ASSETS_PATH}/index.css'>"
        f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png' sizes='32x32'>"
        "</head><body><div id='swagger-ui'></div>"
        "<noscript><h1>CPE serving API</h1><p>Machine-readable: <a href='/openapi.json'>/openapi.json</a> "
        "(OpenAPI 3.1).</p><table><tr><th>family</th><th>method</th><th>path</th><th>what</th>"
        f"<th>responses</th></tr>{_operation_rows()}</table></noscript>"
        f"<script src='{ASSETS_PATH}/swagger-ui-bundle.js'></script>"
        f"<script src='{ASSETS_PATH}/swagger-ui-standalone-preset.js'></script>"
        f"<script src='{ASSETS_PATH}/initializer.js'></script>"
        "</body></html>"
    )
    return Response(page, mimetype="text/html")


def asset_view(name: str) -> Response:
    """GET /docs/assets/<name>: Swagger UI's files from the installed package."""
    if name == "initializer.js":
        return Response(_INITIALIZER, mimetype="text/javascript")
    if name not in _ASSETS:
        abort(404)
    response = send_from_directory(_asset_dir(), name, max_age=3600)
    return response


def install_docs(app: Flask) -> None:
    """Add /docs and its assets (undocumented in the spec: they are a page, not the API)."""
    app.add_url_rule("/docs", "docs", docs_view)
    app.add_url_rule(f"{ASSETS_PATH}/<name>", "docs_asset", asset_view)
