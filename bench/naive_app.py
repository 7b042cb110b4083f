"""The naive baseline: the Flask app most labs write first, one model call per request.

No batching, no queue, no limits; the same decoding (`decode_image`), preparation (`prepare`)
and SavedModel as the service (bench/peer_model.py), so the difference measured is the serving
architecture, not the arithmetic. bench/servers.py runs it under Gunicorn *sync* workers and
under *gthread* (8 threads, 1 worker), from the bench venv (.venv-bench).

    BENCH_MODEL_DIR=model_repository/cpe_cnn/2 gunicorn -k sync -w 1 bench.naive_app:app
    BENCH_MODEL_DIR=model_repository/cpe_cnn/2 gunicorn -k gthread --threads 8 -w 1 bench.naive_app:app
"""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask, jsonify, request

from bench.peer_model import PeerModel

# Loaded at import, i.e. in each worker after the fork (gunicorn without --preload).
_model = PeerModel(Path(os.environ.get("BENCH_MODEL_DIR", "model_repository/cpe_cnn/2")))

app = Flask(__name__)


@app.post("/predict")
def predict():  # type: ignore[no-untyped-def]
    batch = _model.prepare(request.get_data())[None]
    return jsonify(_model.answer(_model.predict(batch)[0]))


@app.get("/readyz")
def readyz():  # type: ignore[no-untyped-def]
    return jsonify({"status": "ready"})
