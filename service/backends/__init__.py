"""Backends run one batch of prepared images through a model: in-process or over gRPC.

`create_backend` is the one factory; each backend module is imported lazily so a worker pulls
in only its own stack (TensorFlow's runtime, or a gRPC channel).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np
from numpy.typing import NDArray

from service.batching.jobs import Outputs
from service.models.repository import ModelVersion
from service.models.signature import ModelInfo

if TYPE_CHECKING:
    from service.config import Settings


class Backend(Protocol):
    """A loaded model; `predict` is synchronous and called by one batcher thread at a time."""

    name: str
    devices: list[str]
    """Where the model runs (TF device names, or the TF Serving address), for /status."""

    def load(self) -> ModelInfo:
        """Load (or connect to) the model after the worker fork and describe its signature."""

    def predict(self, batch: NDArray[np.float32]) -> Outputs:
        """Run (n, H, W, C) prepared images; return (n, classes) probabilities, or named outputs
        (row-aligned) holding `info.output_key` and the `info.extra_outputs` (QC measures)."""

    # NOTE: a backend may also have `explain(batch) -> {"cam", "log_odds"}`, running the version's
    # explain signature (service.explain); one without it (a test fake) answers 501.

    def reachable(self) -> bool:
        """False while the model cannot be reached (a remote server down); the servable then
        reports not available and /readyz fails."""

    def close(self) -> None:
        """Release the model or channel."""


def create_backend(settings: Settings, version: ModelVersion | None = None) -> Backend:
    """The backend the settings name: the embedded one for a version on disk, or TF Serving.

    Raises:
        ValueError: the embedded backend was asked for without a version to load.
    """
    if settings.backend == "tfserving_grpc":
        from service.backends.tfserving_grpc import TfServingGrpcBackend

        return TfServingGrpcBackend(settings)
    if version is None:
        raise ValueError("the tensorflow_local backend loads one model version; none was given")
    from service.backends.tensorflow_local import TensorflowLocalBackend

    return TensorflowLocalBackend(settings, version)
