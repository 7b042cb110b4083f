"""The quality and out-of-distribution gate: per-image verdicts from a version's QC checks.

A version's metadata.json lists measures its signature computes in-graph (an out-of-
distribution score, focus, saturation, emptiness) with warn/reject bounds calibrated at export;
the service adds one check of its own, the image's bit depth against those the model was
trained on. Every backend returns the same measures, so the gate is the same everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from service import metrics
from service.models.metadata import QcSpec

QcMode = Literal["reject", "warn", "off"]
_SEVERITY = {"pass": 0, "warn": 1, "reject": 2}


@dataclass(frozen=True)
class QcVerdict:
    """One image's gate result: pass, warn or reject, and the reasons for anything but pass."""

    status: str = "pass"
    reasons: list[str] = field(default_factory=list)


def bit_depth(pixels: NDArray[np.generic]) -> int | None:
    """8, 12 (12-bit data in a 16-bit container) or 16 for integer images; None for floats."""
    if pixels.dtype == np.uint8:
        return 8
    if pixels.dtype.kind in "ui":
        return 12 if int(pixels.max(initial=0)) < 4096 else 16
    return None


def gate(spec: QcSpec, outputs: Mapping[str, NDArray[np.float32]], depths: Sequence[int | None],
         model: str, version: int) -> list[QcVerdict]:
    """Verdicts for every image of a request (counted per status and reason)."""
    verdicts = []
    for index, depth in enumerate(depths):
        found: dict[str, str] = {}
        for check in spec.checks:
            status = check.verdict(float(np.asarray(outputs[check.output][index]).reshape(-1)[0]))
            if status != "pass":
                found[check.reason] = max(found.get(check.reason, "pass"), status, key=_SEVERITY.__getitem__)
        if spec.bit_depths is not None and depth not in spec.bit_depths:
            found["bit_depth"] = max(found.get("bit_depth", "pass"), "warn", key=_SEVERITY.__getitem__)
        status = max(found.values(), key=_SEVERITY.__getitem__, default="pass")
        verdicts.append(QcVerdict(status, sorted(found)))
        metrics.QC_OUTCOMES.labels(model, str(version), status).inc()
        for reason in found:
            metrics.QC_REASONS.labels(model, str(version), reason).inc()
    return verdicts


def gated(spec: QcSpec) -> bool:
    """Whether a version has a gate at all (versions exported without one answer no `qc`)."""
    return bool(spec.checks) or spec.bit_depths is not None
