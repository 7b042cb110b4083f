"""Backends run one batch of prepared images through a model: in-process or over gRPC."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
from numpy.typing import NDArray

from service.errors import InvalidInput
from service.repository import ModelInfo, ModelVersion

if TYPE_CHECKING:
    from service.config import Settings


class Backend(Protocol):
    """A loaded model; `predict` is synchronous and called by one batcher thread at a time."""

    name: str

    def load(self) -> ModelInfo:
        """Load (or connect to) the model after the worker fork and describe its signature."""

    def predict(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """Run (n, H, W, C) prepared images and return (n, classes) probabilities."""

    def close(self) -> None:
        """Release the model or channel."""


def build_model_info(
    version: ModelVersion,
    signature_name: str,
    input_shapes: Mapping[str, Sequence[int | None]],
    output_keys: Sequence[str],
) -> ModelInfo:
    """Combine a signature (what a backend reports) with the version's metadata.json."""
    metadata = version.metadata
    input_key = metadata.get("input", {}).get("tensor") or _only(input_shapes, "input")
    if input_key not in input_shapes:
        raise InvalidInput(f"signature '{signature_name}' has no input '{input_key}'")
    shape = list(input_shapes[input_key])
    if len(shape) != 4 or any(side is None or side <= 0 for side in shape[1:]):
        raise InvalidInput(
            f"signature input '{input_key}' has shape {shape}; an (n, H, W, C) image is needed"
        )
    output_key = metadata.get("output", {}).get("tensor") or _only(output_keys, "output")
    if output_key not in output_keys:
        raise InvalidInput(f"signature '{signature_name}' has no output '{output_key}'")
    height, width, channels = (int(side) for side in shape[1:])  # type: ignore[arg-type]
    classes = tuple(metadata.get("classes") or ())
    return ModelInfo(
        name=version.name,
        version=version.version,
        signature_name=signature_name,
        input_key=input_key,
        output_key=output_key,
        height=height,
        width=width,
        channels=channels,
        classes=classes,
        metadata=metadata,
        path=version.path if version.path.is_dir() else None,
    )


def _only(keys: Mapping[str, object] | Sequence[str], what: str) -> str:
    names = list(keys)
    if len(names) != 1:
        raise InvalidInput(f"signature has {len(names)} {what}s {names}; name one in metadata.json")
    return names[0]


def load_backend(settings: Settings) -> Backend:
    """The remote backend the settings name (the embedded one is made per version by
    `service.models.ModelManager`); imported lazily so each pulls in only its own stack."""
    if settings.backend != "tfserving_grpc":
        raise ValueError(f"backend {settings.backend!r} is created per model version")
    from service.backends.tfserving_grpc import TfServingGrpcBackend

    return TfServingGrpcBackend(settings)
