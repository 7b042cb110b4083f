"""The model repository on disk, in TF Serving's layout: `<root>/<model>/<version>/`.

A version is a directory named by an integer that holds `saved_model.pb` (a half-copied
version without it is not yet a version); its `metadata.json` is read by
`service.models.metadata`. Nothing about a model is hard-coded in the service.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from service.errors import ModelNotFound
from service.models.metadata import VersionMetadata, check_preprocessing_skew, read_metadata

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelVersion:
    """One servable version on disk."""

    name: str
    version: int
    path: Path
    metadata: VersionMetadata = field(default_factory=VersionMetadata)


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


def list_versions(root: Path, name: str) -> list[int]:
    """Complete versions of `name`, ascending; half-written or hidden directories are skipped."""
    return versions_in(Path(root) / name)


def list_models(root: Path) -> list[str]:
    """Names of the models that have at least one complete version."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(child.name for child in root.iterdir() if child.is_dir() and list_versions(root, child.name))


def version_stamp(version_dir: Path) -> float:
    """Latest mtime in a version directory: a re-exported (fixed) version gets another try."""
    stamps = [p.stat().st_mtime for p in Path(version_dir).rglob("*") if p.is_file()]
    return max(stamps, default=0.0)


def resolve(root: Path, name: str, version: int | None = None, model_dir: Path | None = None) -> ModelVersion:
    """Find `name` at `version` (latest when None) with its metadata, or raise ModelNotFound.

    Reading a version is where train/serve preprocessing skew is checked and reported.
    """
    model_dir = Path(model_dir) if model_dir is not None else Path(root) / name
    versions = versions_in(model_dir)
    if not versions:
        raise ModelNotFound(f"model '{name}' is not in the repository")
    chosen = versions[-1] if version is None else version
    if chosen not in versions:
        raise ModelNotFound(f"model '{name}' has no version {chosen} (has {versions})")
    path = model_dir / str(chosen)
    try:
        metadata = read_metadata(path)
    except ValueError as err:  # unreadable metadata.json: the signature alone must do
        _log.warning("model %s version %d: bad metadata.json: %s", name, chosen, err)
        metadata = VersionMetadata()
    check_preprocessing_skew(name, chosen, metadata)
    return ModelVersion(name=name, version=chosen, path=path, metadata=metadata)
