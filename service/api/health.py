"""GET /healthz (the process answers), /readyz (model loaded and warmed up), /status."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from service.state import get_state

bp = Blueprint("health", __name__)

LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"


@bp.get(LIVENESS_PATH)
def healthz() -> Response:
    """Alive: the worker answers HTTP. Never touches the model, so a slow load is not a restart."""
    return jsonify({"status": "alive"})


@bp.get(READINESS_PATH)
def readyz() -> tuple[Response, int]:
    """Ready once the model is loaded and a warm-up call at every batch size succeeded."""
    state = get_state()
    if state.ready and state.info is not None:
        return jsonify({"status": "ready", "model": state.info.name, "version": state.info.version}), 200
    body = {"status": "not_ready", "model": state.settings.model_name}
    if state.load_error:
        body["reason"] = state.load_error
    return jsonify(body), 503


@bp.get("/status")
def status() -> Response:
    """Model signature, backend, devices and the active batching policy."""
    return jsonify(get_state().describe())
