"""Run an exported version's serving signature: the artefact that is actually served."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training import synthetic


def load_signature(model_dir: Path):
    """The `serving_default` concrete function of a SavedModel directory."""
    import tensorflow as tf

    return tf.saved_model.load(str(model_dir)).signatures["serving_default"]


def run_batches(serve, batches: Iterable[np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenated outputs (every named output) over (n, H, W, 1) raw float32 batches."""
    import tensorflow as tf

    out: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        result = serve(image=tf.constant(batch, tf.float32))
        for key, value in result.items():
            out.setdefault(key, []).append(value.numpy())
    return {key: np.concatenate(values) for key, values in out.items()}


def run_images(serve, images: np.ndarray, batch_size: int = 8) -> dict[str, np.ndarray]:
    return run_batches(serve, (images[s : s + batch_size] for s in range(0, len(images), batch_size)))


def run_rows(serve, rows: Sequence[dict[str, Any]], processes: int = 2,
             batch_size: int = 8) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Generate the plan's images (streaming) and run the signature on them."""
    from service.preprocessing import prepare

    records: list[dict[str, Any]] = []

    def batches():
        buffer = []
        for pixels, record in synthetic.iter_set(rows, processes):
            buffer.append(prepare(pixels, synthetic.HEIGHT, synthetic.WIDTH, 1))
            records.append(record)
            if len(buffer) == batch_size:
                yield np.stack(buffer)
                buffer = []
        if buffer:
            yield np.stack(buffer)

    return run_batches(serve, batches()), records
