"""A small-input CNN (64x64x1, random weights) exported like the paper CNN, for the benchmark.

Its model call costs well under a millisecond, so per-request overhead (HTTP, WSGI, decoding,
Python) dominates: the regime where micro-batching and a lean request path matter most.
It is exported by `training.model.export_model` (same normalising `serving_default` signature,
tensor names and metadata.json layout as the paper CNN).

    python -m bench.small_model --repository /tmp/repo   # writes /tmp/repo/small_cnn/1/
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

MODEL_NAME = "small_cnn"


def build_small_model(height: int = 64, width: int = 64, seed: int = 0) -> Any:
    """Conv(8,3)/pool2 -> Conv(16,3)/pool2 -> Dense(32) -> softmax(2); ~20k parameters."""
    import keras

    from training.model import CLASS_NAMES, INPUT_KEY, OUTPUT_KEY

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(height, width, 1), name=INPUT_KEY)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(32, activation="relu", name="dense1")(x)
    outputs = keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name=OUTPUT_KEY)(x)
    return keras.Model(inputs, outputs, name=MODEL_NAME)


def export_small_model(repository: Path, height: int = 64, width: int = 64, version: int = 1) -> Path:
    """Write `<repository>/small_cnn/<version>/` with training.model.export_model itself."""
    from training.model import export_model

    return export_model(
        build_small_model(height, width), Path(repository) / MODEL_NAME / str(version), model_name=MODEL_NAME,
        extra_metadata={"note": "benchmark model with random weights (bench/small_model.py); not a classifier"},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args()
    print(export_small_model(args.repository, args.height, args.width))


if __name__ == "__main__":
    main()
