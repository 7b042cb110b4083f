"""A small-input CNN (64x64x1, random weights) exported like the paper CNN, for the benchmark.

Its model call costs well under a millisecond, so per-request overhead (HTTP, WSGI, decoding,
Python) dominates: the regime where micro-batching and a lean request path matter most.
The export mirrors `training.model.export_model` (same normalising `serving_default`
signature, same tensor names, same metadata.json layout) with the input size as a parameter.

    python -m bench.small_model --repository /tmp/repo   # writes /tmp/repo/small_cnn/1/
"""

from __future__ import annotations

import argparse
import json
import shutil
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
    """Write `<repository>/small_cnn/<version>/` as training.model.export_model would."""
    import keras
    import tensorflow as tf

    from service.preprocessing import PREPROCESSING_VERSION, preprocessing_hash
    from training.model import CLASS_NAMES, INPUT_KEY, METADATA_FILE, OUTPUT_KEY, SIGNATURE_NAME
    from training.normalization import HIGH_PERCENTILE, LOW_PERCENTILE, normalize_intensity

    model = build_small_model(height, width)
    version_dir = Path(repository) / MODEL_NAME / str(version)
    staging = version_dir.with_name(f".{version_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)

    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_KEY: model(normalize_intensity(image), training=False)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name=SIGNATURE_NAME,
        fn=serve,
        input_signature=[tf.TensorSpec([None, height, width, 1], tf.float32, name=INPUT_KEY)],
    )
    archive.write_out(str(staging), verbose=False)
    metadata: dict[str, Any] = {
        "name": MODEL_NAME,
        "version": version,
        "classes": list(CLASS_NAMES),
        "positive_class": CLASS_NAMES[1],
        "signature_name": SIGNATURE_NAME,
        "input": {
            "tensor": INPUT_KEY, "height": height, "width": width, "channels": 1, "dtype": "float32",
            "units": "raw intensity (any bit depth); normalised inside the graph",
        },
        "output": {"tensor": OUTPUT_KEY},
        "preprocessing": {
            "version": PREPROCESSING_VERSION,
            "sha256": preprocessing_hash(),
            "normalization": f"per-image percentile {LOW_PERCENTILE}-{HIGH_PERCENTILE} in graph",
        },
        "parameters": int(model.count_params()),
        "note": "benchmark model with random weights (bench/small_model.py); not a classifier",
    }
    (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    shutil.rmtree(version_dir, ignore_errors=True)
    staging.rename(version_dir)
    return version_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args()
    print(export_small_model(args.repository, args.height, args.width))


if __name__ == "__main__":
    main()
