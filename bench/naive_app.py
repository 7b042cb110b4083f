"""The naive baseline: the Flask app most labs write first, for Gunicorn *sync* workers.

One model call per request, no batching, no queue, no limits; the same decoding
(`decode_image`), preparation (`prepare`) and SavedModel as the service, so the difference
measured is the serving architecture, not the arithmetic.

    BENCH_MODEL_DIR=model_repository/cpe_cnn/1 gunicorn -k sync -w 2 bench.naive_app:app
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import tensorflow as tf
from flask import Flask, jsonify, request

from service.codecs.images import decode_image
from service.preprocessing import prepare

MODEL_DIR = Path(os.environ.get("BENCH_MODEL_DIR", "model_repository/cpe_cnn/1"))

# Loaded at import, i.e. in each sync worker after the fork (gunicorn without --preload).
_model = tf.saved_model.load(str(MODEL_DIR))
_infer = _model.signatures["serving_default"]
INPUT_KEY, _spec = next(iter(_infer.structured_input_signature[1].items()))
_, HEIGHT, WIDTH, CHANNELS = _spec.shape.as_list()
_metadata = json.loads((MODEL_DIR / "metadata.json").read_text()) if (MODEL_DIR / "metadata.json").exists() else {}
CLASSES = _metadata.get("classes", ["class_0", "class_1"])
OUTPUT_KEY = _metadata.get("output", {}).get("tensor", "probabilities")
_infer(**{INPUT_KEY: tf.zeros([1, HEIGHT, WIDTH, CHANNELS], tf.float32)})  # first call traces/compiles

app = Flask(__name__)


@app.post("/predict")
def predict():  # type: ignore[no-untyped-def]
    pixels = decode_image(request.get_data())
    batch = prepare(pixels, HEIGHT, WIDTH, CHANNELS)[np.newaxis]
    probabilities = _infer(**{INPUT_KEY: tf.constant(batch)})[OUTPUT_KEY].numpy()[0]
    best = int(np.argmax(probabilities))
    return jsonify(
        {"label": CLASSES[best], "probabilities": {name: float(p) for name, p in zip(CLASSES, probabilities)}}
    )


@app.get("/readyz")
def readyz():  # type: ignore[no-untyped-def]
    return jsonify({"status": "ready"})
