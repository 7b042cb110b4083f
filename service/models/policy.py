"""Version policy: which models and versions to serve, from TF Serving's own `models.config`.

The same file drives TensorFlow Serving (`--model_config_file`) and this service, so a lab
switching backends keeps one source of truth for names, base paths and version policies.
Without a file, every model in the repository is served at its latest version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from service.models.repository import list_models

PolicyKind = Literal["latest", "specific", "all"]


@dataclass(frozen=True)
class ModelPolicy:
    """One `config { ... }` entry of a model_config_list."""

    name: str
    base_path: Path
    kind: PolicyKind = "latest"
    num_versions: int = 1
    versions: frozenset[int] = frozenset()
    labels: dict[str, int] = field(default_factory=dict)

    def select(self, on_disk: list[int]) -> list[int]:
        """The versions to serve out of those on disk (ascending), as TF Serving chooses them."""
        if self.kind == "all":
            return list(on_disk)
        if self.kind == "specific":
            return [v for v in on_disk if v in self.versions]
        return list(on_disk[-self.num_versions:])


def read_model_config(path: Path, repository: Path) -> list[ModelPolicy]:
    """Parse a models.config (protobuf text format); relative or missing base paths resolve
    to `<repository>/<name>`, so a file written for TF Serving's /models mount works here too."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse(Path(path).read_text(), model_server_config_pb2.ModelServerConfig())
    policies = []
    for entry in config.model_config_list.config:
        base = Path(entry.base_path) if entry.base_path else repository / entry.name
        if not base.is_dir():
            base = repository / entry.name
        choice = entry.model_version_policy.WhichOneof("policy_choice") or "latest"
        policies.append(
            ModelPolicy(
                name=entry.name,
                base_path=base,
                kind=choice,  # type: ignore[arg-type]
                num_versions=max(entry.model_version_policy.latest.num_versions, 1),
                versions=frozenset(entry.model_version_policy.specific.versions),
                labels=dict(entry.version_labels),
            )
        )
    return policies


def discover(repository: Path) -> list[ModelPolicy]:
    """Every model directory in the repository, latest version only."""
    return [ModelPolicy(name=name, base_path=repository / name) for name in list_models(repository)]
