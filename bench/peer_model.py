"""The peers' model: the same SavedModel, decoder and preparation as the service, nothing else.

Shared by the naive Flask app and the Ray Serve deployment so that the peers differ from the
service (and from each other) only in how they serve, not in the arithmetic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.codecs.images import decode_image
from service.preprocessing import prepare


class PeerModel:
    """A SavedModel's `serving_default` signature, traced once at load (first call compiles)."""

    def __init__(self, model_dir: Path) -> None:
        import tensorflow as tf

        self._tf = tf
        self._model = tf.saved_model.load(str(model_dir))  # kept: the signature needs its variables
        self._infer = self._model.signatures["serving_default"]
        self.input_key, spec = next(iter(self._infer.structured_input_signature[1].items()))
        _, self.height, self.width, self.channels = spec.shape.as_list()
        metadata_path = model_dir / "metadata.json"
        metadata = json.loads(metadata_path.read_text()) if metadata_path.exists() else {}
        self.classes: list[str] = metadata.get("classes", ["class_0", "class_1"])
        self.output_key: str = metadata.get("output", {}).get("tensor", "probabilities")
        self.predict(np.zeros([1, self.height, self.width, self.channels], np.float32))

    def prepare(self, body: bytes) -> NDArray[np.float32]:
        """Decode one image body and prepare it into one (H, W, C) model input."""
        return prepare(decode_image(body), self.height, self.width, self.channels)

    def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """One model call on a (n, H, W, C) batch; (n, classes) probabilities."""
        outputs = self._infer(**{self.input_key: self._tf.constant(batch)})
        return np.asarray(outputs[self.output_key].numpy())

    def answer(self, probabilities: NDArray[np.float32]) -> dict[str, Any]:
        """The peers' JSON answer for one image: the top label and every class's probability."""
        best = int(np.argmax(probabilities))
        return {"label": self.classes[best],
                "probabilities": {name: float(p) for name, p in zip(self.classes, probabilities)}}
