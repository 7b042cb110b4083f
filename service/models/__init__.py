"""The model lifecycle: repository on disk, version policy, loading, servables and routing."""

from service.models.manager import ModelManager
from service.models.metadata import METADATA_FILE, VersionMetadata, read_metadata
from service.models.repository import ModelVersion, list_models, list_versions, resolve
from service.models.servable import Servable, ServableState
from service.models.signature import ModelInfo, build_model_info

__all__ = [
    "METADATA_FILE", "ModelInfo", "ModelManager", "ModelVersion", "Servable", "ServableState", "VersionMetadata",
    "build_model_info", "list_models", "list_versions", "read_metadata", "resolve",
]
