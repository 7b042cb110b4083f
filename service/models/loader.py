"""Loading and hot reload: the background thread that fills the worker's `ModelManager`.

With the embedded backend it reconciles the repository against the version policy (TF
Serving's models.config or "latest of every model"): a new complete version is loaded and
warmed up while the old one keeps serving, traffic switches atomically, and the old version is
unloaded after its queued and running requests finish. A broken new version is reported
(status, log, metric) and the old one keeps serving. With TF Serving behind gRPC (or an
injected backend) there is one servable, retried with backoff until its server answers.
"""

from __future__ import annotations

import logging
from pathlib import Path

from service.backends import create_backend
from service.models.manager import ModelManager
from service.models.policy import ModelPolicy, discover, read_model_config
from service.models.repository import resolve, version_stamp, versions_in
from service.models.servable import Servable, ServableState

_log = logging.getLogger(__name__)


def run_loader(manager: ModelManager) -> None:
    """The loader thread's body: one remote/injected servable, or the repository watcher."""
    if manager.fixed_backend is not None or manager.settings.backend != "tensorflow_local":
        _load_single(manager)
    else:
        RepositoryWatcher(manager).run()


def _load_single(manager: ModelManager) -> None:
    settings = manager.settings
    name = settings.model_name
    backend = manager.fixed_backend or create_backend(settings)
    pause_s = 0.5
    while not manager.stopping.is_set():
        servable = Servable(settings, backend, name, settings.model_version)
        manager.replace_servables(name, [servable])
        try:
            servable.load()
            manager.errors.pop(name, None)
            manager.first_pass.set()
            manager.publish_readiness()
            return
        except Exception:  # noqa: BLE001 - reported through errors and /readyz
            manager.errors[name] = servable.error or "load failed"
            _log.error("model %s failed to load: %s", name, servable.error)
        manager.first_pass.set()
        manager.publish_readiness()
        manager.stopping.wait(pause_s)
        pause_s = min(pause_s * 2, settings.load_retry_max_s)


class RepositoryWatcher:
    """Keeps the loaded versions in line with the policy and what is on disk."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager
        self.settings = manager.settings
        self._failed: dict[tuple[str, int], float] = {}

    def run(self) -> None:
        manager = self.manager
        while not manager.stopping.is_set():
            try:
                self.reconcile()
            except Exception:  # noqa: BLE001 - a bad config file must not kill the watcher
                _log.exception("repository reconcile failed")
            manager.first_pass.set()
            manager.publish_readiness()
            if self.settings.repository_poll_interval_s <= 0:
                return
            manager.stopping.wait(self.settings.repository_poll_interval_s)

    def read_policies(self) -> list[ModelPolicy]:
        """models.config when configured, else every model at its latest (or pinned) version."""
        repository = self.settings.model_repository
        if self.settings.model_config_file is not None:
            return read_model_config(self.settings.model_config_file, repository)
        policies = discover(repository)
        if self.settings.model_version is not None:
            policies = [
                ModelPolicy(p.name, p.base_path, "specific", versions=frozenset({self.settings.model_version}))
                if p.name == self.settings.model_name else p
                for p in policies
            ]
        return policies

    def reconcile(self) -> None:
        """Bring loaded versions in line with the policy and what is on disk."""
        policies = {policy.name: policy for policy in self.read_policies()}
        self.manager.set_policies(policies)
        for name in set(self.manager.model_names()) - set(policies):
            self._retire(name, self.manager.servables_of(name))
            self.manager.replace_servables(name, None)
        for policy in policies.values():
            self._reconcile_model(policy)

    def _reconcile_model(self, policy: ModelPolicy) -> None:
        wanted = policy.select(versions_in(policy.base_path))
        group = self.manager.servables_of(policy.name)
        live = {s.version for s in group if s.state in (ServableState.LOADING, ServableState.AVAILABLE)}
        for version in wanted:
            if version in live or self.manager.stopping.is_set():
                continue
            version_dir = policy.base_path / str(version)
            stamp = version_stamp(version_dir)
            if self._failed.get((policy.name, version)) == stamp:
                continue  # the same broken files: do not retry until they change
            self._load_version(policy, version, stamp)
        group = self.manager.servables_of(policy.name)
        # Unload what the policy no longer wants, but never the last available version: a broken
        # new version must not take the model down.
        if any(s.available and s.version in wanted for s in group):
            self._retire(policy.name, [s for s in group if s.version not in wanted])
        self.manager.replace_servables(policy.name, [
            s for s in self.manager.servables_of(policy.name)
            if s.state is not ServableState.END or (s.error and s.version in wanted)
        ])

    def _load_version(self, policy: ModelPolicy, version: int, stamp: float) -> None:
        name = policy.name
        model_version = resolve(Path(policy.base_path).parent, name, version, model_dir=policy.base_path)
        servable = Servable(self.settings, create_backend(self.settings, model_version), name, version)
        group = [s for s in self.manager.servables_of(name) if s.version != version]  # drop old failures
        self.manager.replace_servables(name, [*group, servable])
        try:
            servable.load()
            self._failed.pop((name, version), None)
            self.manager.errors.pop(name, None)
        except Exception:  # noqa: BLE001 - reported; the previous version keeps serving
            self._failed[(name, version)] = stamp
            self.manager.errors[name] = f"version {version}: {servable.error}"
            _log.error("model %s version %d failed to load: %s", name, version, servable.error)

    def _retire(self, name: str, servables: list[Servable]) -> None:
        for servable in servables:
            if servable.state is ServableState.AVAILABLE:
                _log.info("unloading model %s version %s", name, servable.version)
                servable.unload(self.settings.request_timeout_s)
