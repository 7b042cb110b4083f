"""GET /healthz (the process answers), /readyz (models loaded and warmed up), /status."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from service.api.common import get_manager
from service.api.openapi import document
from service.errors import redact_paths
from service.schemas import HealthResponse, ReadyResponse, StatusResponse

bp = Blueprint("health", __name__)

LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"


@bp.get(LIVENESS_PATH)
@document("Liveness: the worker answers", tag="health", responses={200: HealthResponse})
def healthz() -> Response:
    """Alive: the worker answers HTTP. Never touches the model, so a slow load is not a restart."""
    return jsonify({"status": "alive"})


@bp.get(READINESS_PATH)
@document("Readiness: every model loaded and warmed up", tag="health",
          responses={200: ReadyResponse, 503: ReadyResponse})
def readyz() -> tuple[Response, int]:
    """Ready once every model has a version loaded and warmed up (and its backend reachable)."""
    manager = get_manager()
    if manager.ready:
        served = {name: [s.version for s in manager.versions(name) if s.available] for name in manager.model_names()}
        return jsonify({"status": "ready", "models": served}), 200
    return jsonify({"status": "not_ready", "reason": redact_paths(manager.not_ready_reason() or "")}), 503


@bp.get("/status")
@document("Models, versions, signatures and batching", tag="health", responses={200: StatusResponse})
def status() -> Response:
    """Models, versions and their states, signatures, devices, and the active batching policy."""
    manager = get_manager()
    settings = manager.settings
    return jsonify({
        **manager.describe(),
        # What a client may send (cpe-client packs its requests by these).
        "limits": {
            "max_body_bytes": settings.max_body_bytes,
            "max_images_per_request": settings.max_images_per_request,
            "max_image_pixels": settings.max_image_pixels,
            "max_queue_size": settings.max_queue_size,
            "request_timeout_s": settings.request_timeout_s,
        },
    })
