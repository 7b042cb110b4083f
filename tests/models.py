"""Tiny real SavedModels for tests, exported exactly as the committed model is."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from training.model import INPUT_KEY, OUTPUT_KEY, export_model, write_warmup_requests


def export_tiny_model(
    repository: Path, name: str = "tiny", version: int = 1, *, height: int = 32, width: int = 40,
    channels: int = 1, seed: int = 0, warmup_records: bool = False,
) -> Path:
    """A small CNN (random weights) with the serving contract of the paper CNN."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(height, width, channels), name=INPUT_KEY)
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax", name=OUTPUT_KEY)(x)
    model = keras.Model(inputs, outputs)
    version_dir = export_model(model, Path(repository) / name / str(version), model_name=name)
    if warmup_records:
        rng = np.random.default_rng(seed)
        write_warmup_requests(version_dir, rng.uniform(0, 4095, (1, height, width, channels)), model_name=name)
    return version_dir


def export_flat_model(repository: Path, name: str = "flat", *, height: int = 32, width: int = 40) -> Path:
    """A model with no convolution (Flatten -> softmax): exported without an explain signature."""
    inputs = keras.Input(shape=(height, width, 1), name=INPUT_KEY)
    outputs = keras.layers.Dense(2, activation="softmax", name=OUTPUT_KEY)(keras.layers.Flatten()(inputs))
    return export_model(keras.Model(inputs, outputs), Path(repository) / name / "1", model_name=name)
