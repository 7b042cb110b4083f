"""Test doubles for the backend: a deterministic model whose answer depends on its input."""

from __future__ import annotations

import threading
import time

import numpy as np
from numpy.typing import NDArray

from service.models import ModelInfo

FAKE_HEIGHT, FAKE_WIDTH = 32, 40


def expected_probabilities(images: NDArray[np.float32]) -> NDArray[np.float32]:
    """What FakeBackend answers: p(infected) from each image's own mean, so reordering shows."""
    means = images.reshape(len(images), -1).mean(axis=1)
    infected = (means % 1000.0) / 1000.0
    return np.stack([1.0 - infected, infected], axis=1).astype(np.float32)


class FakeBackend:
    """Records batch sizes; can be held on a gate, slowed down, or made to fail."""

    name = "fake"
    devices = ["fake:0"]

    def __init__(
        self,
        *,
        delay_s: float = 0.0,
        fail_with: Exception | None = None,
        gate: threading.Event | None = None,
        load_gate: threading.Event | None = None,
        height: int = FAKE_HEIGHT,
        width: int = FAKE_WIDTH,
        channels: int = 1,
    ) -> None:
        self.delay_s = delay_s
        self.fail_with = fail_with
        self.gate = gate
        self.load_gate = load_gate  # load() waits for it: a model that is slow to load
        self.batch_sizes: list[int] = []
        self.started = threading.Event()  # set when a batch starts (to sequence tests)
        self.info = ModelInfo(
            name="fake", version=1, signature_name="serving_default", input_key="image",
            output_key="probabilities", height=height, width=width, channels=channels,
            classes=("uninfected", "infected"),
        )

    def load(self) -> ModelInfo:
        if self.load_gate is not None:
            self.load_gate.wait(timeout=10)
        return self.info

    def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        self.started.set()
        if self.gate is not None:
            self.gate.wait(timeout=10)
        self.batch_sizes.append(len(batch))
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_with is not None:
            raise self.fail_with
        return expected_probabilities(batch)

    def reachable(self) -> bool:
        return True

    def close(self) -> None:
        pass
