"""What the service needs to feed a loaded model and read its answer, from its signature.

A backend reports the signature (tensor names and shapes); the version's metadata.json adds
what a signature cannot carry (class names, which output is the probabilities, the decision
threshold). Both backends build their `ModelInfo` through `build_model_info`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.errors import InvalidInput
from service.models.metadata import VersionMetadata
from service.models.repository import ModelVersion

#: The Grad-CAM signature exported beside serving_default (training.gradcam), and its outputs.
EXPLAIN_SIGNATURE = "explain"
CAM_OUTPUT = "cam"
LOG_ODDS_OUTPUT = "log_odds"


def explain_signature(outputs_by_signature: Mapping[str, Sequence[str]]) -> str | None:
    """The explain signature's name when a SavedModel has one with the outputs read, else None."""
    outputs = outputs_by_signature.get(EXPLAIN_SIGNATURE)
    if outputs is None or not {CAM_OUTPUT, LOG_ODDS_OUTPUT} <= set(outputs):
        return None
    return EXPLAIN_SIGNATURE


@dataclass(frozen=True)
class ModelInfo:
    """A loaded version's input and output contract."""

    name: str
    version: int
    signature_name: str
    input_key: str
    output_key: str
    height: int
    width: int
    channels: int
    classes: tuple[str, ...]
    metadata: VersionMetadata = field(default_factory=VersionMetadata)
    path: Path | None = None
    """The version's directory, when it is on this machine."""
    extra_outputs: tuple[str, ...] = ()
    """Signature outputs read besides the probabilities: the QC gate's measures."""
    fingerprint: str | None = None
    """The SavedModel's own fingerprint (fingerprint.pb's saved_model_checksum), when on disk."""
    explain_signature: str | None = None
    """The signature computing Grad-CAM maps (`service.explain`); None: the version cannot explain."""

    def class_names(self, width: int) -> tuple[str, ...]:
        """The model's class names, or class_0.. when its metadata names none (or too few)."""
        return self.classes if len(self.classes) == width else tuple(f"class_{i}" for i in range(width))

    def decide(self, probabilities: NDArray[np.float32]) -> tuple[tuple[str, ...], NDArray[np.intp], int]:
        """Class names, each row's call (a column) and the positive class's column.

        With a `decision_threshold` and a named positive class of two, the positive class is
        called at or above the threshold; otherwise the most probable class wins. The positive
        column is the named positive class, else the last class.
        """
        names = self.class_names(probabilities.shape[1])
        positive = self.metadata.positive_class
        column = names.index(positive) if positive in names else len(names) - 1
        best = np.argmax(probabilities, axis=1)
        threshold = self.metadata.decision_threshold
        if threshold is not None and positive in names and len(names) == 2:
            best = np.where(probabilities[:, column] >= threshold, column, 1 - column)
        return names, best, column

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for status routes and logs."""
        return {
            "name": self.name,
            "version": self.version,
            "signature_name": self.signature_name,
            "input": {
                "tensor": self.input_key,
                "shape": [None, self.height, self.width, self.channels],
                "dtype": "float32",
            },
            "output": {"tensor": self.output_key, "shape": [None, len(self.classes)]},
            "classes": list(self.classes),
            "preprocessing": self.metadata.preprocessing.model_dump(exclude_none=True),
            "explain_signature": self.explain_signature,
        }


def build_model_info(
    version: ModelVersion,
    signature_name: str,
    input_shapes: Mapping[str, Sequence[int | None]],
    output_keys: Sequence[str],
    explain: str | None = None,
) -> ModelInfo:
    """Combine a signature (what a backend reports) with the version's metadata.json."""
    metadata = version.metadata
    input_key = metadata.input.tensor or _only(input_shapes, "input")
    if input_key not in input_shapes:
        raise InvalidInput(f"signature '{signature_name}' has no input '{input_key}'")
    shape = list(input_shapes[input_key])
    if len(shape) != 4 or any(side is None or side <= 0 for side in shape[1:]):
        raise InvalidInput(
            f"signature input '{input_key}' has shape {shape}; an (n, H, W, C) image is needed"
        )
    output_key = metadata.output.tensor or _only(output_keys, "output")
    if output_key not in output_keys:
        raise InvalidInput(f"signature '{signature_name}' has no output '{output_key}'")
    missing = sorted({check.output for check in metadata.qc.checks} - set(output_keys))
    if missing:
        raise InvalidInput(f"metadata.json's QC checks read outputs {missing} the signature lacks")
    height, width, channels = (int(side) for side in shape[1:])  # type: ignore[arg-type]
    return ModelInfo(
        name=version.name,
        version=version.version,
        signature_name=signature_name,
        input_key=input_key,
        output_key=output_key,
        height=height,
        width=width,
        channels=channels,
        classes=tuple(metadata.classes),
        metadata=metadata,
        path=version.path if version.path.is_dir() else None,
        extra_outputs=tuple(sorted({check.output for check in metadata.qc.checks if check.output != output_key})),
        fingerprint=read_fingerprint(version.path),
        explain_signature=explain,
    )


def read_fingerprint(version_dir: Path) -> str | None:
    """TensorFlow's checksum of the SavedModel (written at export since TF 2.12), as a string."""
    path = Path(version_dir) / "fingerprint.pb"
    if not path.is_file():
        return None
    from tensorflow.core.protobuf import fingerprint_pb2

    try:
        return str(fingerprint_pb2.FingerprintDef.FromString(path.read_bytes()).saved_model_checksum)
    except Exception:  # noqa: BLE001 - a damaged fingerprint is not worth refusing the model
        return None


def _only(keys: Mapping[str, object] | Sequence[str], what: str) -> str:
    names = list(keys)
    if len(names) != 1:
        raise InvalidInput(f"signature has {len(names)} {what}s {names}; name one in metadata.json")
    return names[0]
