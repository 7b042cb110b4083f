"""The per-request HTTP work every inference view shares: state, deadline, bookkeeping.

Views call `begin_inference` first (it names the model for metrics and logs, starts the
deadline and answers 404/503 before a large body is read), then `run_inference` with the
images they parsed. Everything below this package is reached through these two calls.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from flask import current_app, g, request

from service.errors import InvalidInput, QueueFull
from service.models import ModelManager, Servable
from service.pipeline import ImageInput, InferenceResult, ModelRoute, Pipeline
from service.quality import QcMode
from service.tiling import TilingMode

EXTENSION = "serving"
PIPELINE_EXTENSION = "serving.pipeline"


def get_manager() -> ModelManager:
    """The current app's ModelManager (flaskr's `get_db()` pattern)."""
    manager: ModelManager = current_app.extensions[EXTENSION]
    return manager


def get_pipeline() -> Pipeline:
    """The current app's request pipeline."""
    pipeline: Pipeline = current_app.extensions[PIPELINE_EXTENSION]
    return pipeline


def begin_inference(route: ModelRoute) -> Servable:
    """Start an inference request: the model it is counted under, its deadline, and the
    servable it would use now (raises ModelNotFound / ModelNotReady before the body is read)."""
    pipeline = get_pipeline()
    settings = pipeline.settings
    g.model = route.name or pipeline.manager.default_model()
    accepted_at = g.get("accepted_at", g.started)
    g.deadline = accepted_at + settings.request_timeout_s
    waited_s = g.started - accepted_at
    if waited_s > settings.max_thread_wait_s:
        # Overload that never reached the batcher's queue: requests pile up waiting for a thread.
        raise QueueFull(f"waited {waited_s:.1f} s for a worker thread; the server is overloaded",
                        retry_after_s=max(1, round(waited_s / 2)))
    return pipeline.manager.get(route.name, route.version, route.label)


def check_image_count(count: int) -> None:
    """413 before any image is decoded when a request carries too many."""
    get_pipeline().check_image_count(count)


def run_inference(images: Sequence[ImageInput], route: ModelRoute, qc_mode: QcMode = "warn",
                  tiling: TilingMode = "never", explain: bool = False) -> InferenceResult:
    """Run the pipeline within the request's deadline; record what the access log reports.

    Tiling is off unless the view asks: the TF Serving and v2 protocols answer one row per
    input, which a tiled image's grid does not fit.
    """
    g.images = len(images)
    result = get_pipeline().run(images, route, g.deadline, qc_mode, tiling, explain)
    g.batch_ids = result.batch_ids
    g.model_version = result.info.version
    g.timings_s = result.timings_s
    return result


def parse_json(data: bytes | str, what: str = "body") -> Any:
    """JSON as every route reads it: malformed or absurdly nested JSON is a 400, never a 500.

    Python's parser accepts NaN and Infinity; they are left to the pixel checks (422).
    """
    try:
        return json.loads(data)
    except RecursionError as err:
        raise InvalidInput(f"{what} is nested too deeply") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidInput(f"{what} is not valid JSON: {err}") from err


def read_json_body() -> Any:
    """The request body as JSON (see `parse_json`)."""
    return parse_json(request.get_data(cache=False))
