"""`metadata.json` beside each model version: what a SavedModel's signature cannot say.

Written by `training/model.py::export_model` and read by the service through the same typed
model, so the two cannot drift apart. Every field is optional: a SavedModel exported elsewhere
(a Keras ResNet50, say) has no metadata and is served from its signature alone.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service import metrics
from service.preprocessing import PREPROCESSING_VERSION, preprocessing_hash

_log = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"


class _Open(BaseModel):
    # NOTE: unknown keys are kept, not refused: training adds blocks (evaluation, counts, QC
    # calibration) faster than the service learns to read them.
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class InputSpec(_Open):
    tensor: str | None = None
    height: int | None = None
    width: int | None = None
    channels: int | None = None
    dtype: str | None = None
    units: str | None = None


class OutputSpec(_Open):
    tensor: str | None = None


class PreprocessingSpec(_Open):
    version: str | None = None
    sha256: str | None = None
    normalization: str | None = None


class QcCheck(_Open):
    """One measure of the quality/out-of-distribution gate: a signature output and its bounds.

    A value beyond a `warn_*` bound flags the image; beyond a `reject_*` bound the image is
    refused under `?qc=reject`. Bounds are measured on held-out in-distribution images at
    export, so every backend applies the same gate.
    """

    reason: str
    output: str
    warn_above: float | None = None
    warn_below: float | None = None
    reject_above: float | None = None
    reject_below: float | None = None

    def verdict(self, value: float) -> str:
        """'reject', 'warn' or 'pass' for one image's value (NaN fails closed)."""
        if math.isnan(value):
            return "reject"
        if (self.reject_above is not None and value > self.reject_above) or (
                self.reject_below is not None and value < self.reject_below):
            return "reject"
        if (self.warn_above is not None and value > self.warn_above) or (
                self.warn_below is not None and value < self.warn_below):
            return "warn"
        return "pass"


class QcSpec(_Open):
    """The version's quality and out-of-distribution gate (empty: nothing is checked)."""

    checks: list[QcCheck] = Field(default_factory=list)
    bit_depths: list[int] | None = None
    """Bit depths of the images the model was trained on; others are flagged `bit_depth`."""


class ExplainSpec(_Open):
    """Where the explain signature's map lies on the model's input (training.gradcam)."""

    layer: str | None = None
    cell_origin_px: list[float] | None = None
    """[y, x] of the centre of the map's first cell, in input pixels (receptive-field centre)."""
    cell_stride_px: list[float] | None = None
    """[y, x] distance between neighbouring cells' centres, in input pixels."""


class VersionMetadata(_Open):
    """The typed form of a version's metadata.json."""

    name: str | None = None
    version: int | None = None
    classes: list[str] = Field(default_factory=list)
    positive_class: str | None = None
    signature_name: str | None = None
    input: InputSpec = Field(default_factory=InputSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    preprocessing: PreprocessingSpec = Field(default_factory=PreprocessingSpec)
    decision_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """p(positive class) at or above which the positive class is called (argmax when unset)."""
    qc: QcSpec = Field(default_factory=QcSpec)
    explain: ExplainSpec = Field(default_factory=ExplainSpec)


def read_metadata(version_dir: Path) -> VersionMetadata:
    """The version's metadata.json, or empty metadata for SavedModels exported elsewhere.

    Raises:
        ValueError: the file exists but is not valid JSON or not the expected shape.
    """
    path = Path(version_dir) / METADATA_FILE
    if not path.is_file():
        return VersionMetadata()
    try:
        return VersionMetadata.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as err:
        raise ValueError(f"{path}: {err}") from err


def write_metadata(version_dir: Path, metadata: VersionMetadata) -> Path:
    """Write metadata.json (training's export); validated by the same model the service reads.
    Only what was given is written (an explicit null included): nothing is added or lost."""
    path = Path(version_dir) / METADATA_FILE
    path.write_text(json.dumps(metadata.model_dump(mode="json", exclude_unset=True), indent=2) + "\n")
    return path


def check_preprocessing_skew(name: str, version: int, metadata: VersionMetadata) -> str | None:
    """Compare the preprocessing a version was trained with to the one this service runs.

    A different version number is train/serve skew (a warning and a metric); a different
    source hash with the same version is worth a note. Returns the problem, or None.
    """
    recorded = metadata.preprocessing
    if recorded.version is None:
        return None
    if recorded.version != PREPROCESSING_VERSION:
        problem = f"trained with preprocessing v{recorded.version}, the service runs v{PREPROCESSING_VERSION}"
        _log.warning("model %s version %d: %s", name, version, problem)
        metrics.PREPROCESSING_SKEW.labels(name, str(version)).set(1)
        return problem
    metrics.PREPROCESSING_SKEW.labels(name, str(version)).set(0)
    if recorded.sha256 is not None and recorded.sha256 != preprocessing_hash():
        _log.info("model %s version %d: preprocessing source hash differs (same version)", name, version)
    return None
