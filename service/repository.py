"""The model repository on disk, in TF Serving's layout: `<root>/<model>/<version>/`.

A version is a directory named by an integer that holds `saved_model.pb`; its `metadata.json`
(written by `training/model.py::export_model`) carries what the signature cannot: class names
and the preprocessing version and hash. Nothing about a model is hard-coded in the service.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.errors import ModelNotFound
from service.preprocessing import PREPROCESSING_VERSION, preprocessing_hash

_log = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"


@dataclass(frozen=True)
class ModelVersion:
    """One servable version on disk."""

    name: str
    version: int
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    """What the service needs to feed a loaded model and read its answer."""

    name: str
    version: int
    signature_name: str
    input_key: str
    output_key: str
    height: int
    width: int
    channels: int
    classes: tuple[str, ...]
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    """The version's directory, when it is on this machine."""

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
            "preprocessing": self.metadata.get("preprocessing", {}),
        }


def list_versions(root: Path, name: str) -> list[int]:
    """Complete versions of `name`, ascending; half-written or hidden directories are skipped."""
    return versions_in(Path(root) / name)


def versions_in(model_dir: Path) -> list[int]:
    """Complete versions in one model's directory (its TF Serving base_path), ascending."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    versions = [
        int(child.name)
        for child in model_dir.iterdir()
        if child.is_dir() and child.name.isdigit() and (child / "saved_model.pb").is_file()
    ]
    return sorted(versions)


def list_models(root: Path) -> list[str]:
    """Names of the models that have at least one complete version."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(child.name for child in root.iterdir() if child.is_dir() and list_versions(root, child.name))


def read_metadata(version_dir: Path) -> dict[str, Any]:
    """The version's metadata.json, or {} for SavedModels exported elsewhere."""
    path = Path(version_dir) / METADATA_FILE
    if not path.is_file():
        return {}
    metadata: dict[str, Any] = json.loads(path.read_text())
    return metadata


def resolve(root: Path, name: str, version: int | None = None, model_dir: Path | None = None) -> ModelVersion:
    """Find `name` at `version` (latest when None) or raise ModelNotFound."""
    model_dir = Path(model_dir) if model_dir is not None else Path(root) / name
    versions = versions_in(model_dir)
    if not versions:
        raise ModelNotFound(f"model '{name}' is not in the repository")
    chosen = versions[-1] if version is None else version
    if chosen not in versions:
        raise ModelNotFound(f"model '{name}' has no version {chosen} (has {versions})")
    path = model_dir / str(chosen)
    metadata = read_metadata(path)
    _warn_on_preprocessing_skew(name, chosen, metadata)
    return ModelVersion(name=name, version=chosen, path=path, metadata=metadata)


def _warn_on_preprocessing_skew(name: str, version: int, metadata: dict[str, Any]) -> None:
    recorded = metadata.get("preprocessing", {})
    if not recorded:
        return
    if recorded.get("version") != PREPROCESSING_VERSION:
        _log.warning(
            "model %s/%d was trained with preprocessing v%s, the service runs v%s",
            name, version, recorded.get("version"), PREPROCESSING_VERSION,
        )
    elif recorded.get("sha256") != preprocessing_hash():
        _log.info("model %s/%d: preprocessing source hash differs (same version)", name, version)
