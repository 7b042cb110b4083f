"""The worker's model manager: which versions are loaded, routing, and hot reload.

With the embedded backend a watcher thread reconciles the repository against the version
policy (TF Serving's models.config or "latest of every model"): a new complete version is
loaded and warmed up while the old one keeps serving, traffic switches atomically, and the old
version is unloaded after its queued and running requests finish. A broken new version is
reported (status, log, metric) and the old one keeps serving. With TF Serving behind gRPC (or
an injected backend) there is one servable, retried until its server answers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flask import current_app
from numpy.typing import NDArray

from service import metrics
from service.backends import Backend, load_backend
from service.config import Settings
from service.errors import ModelNotFound, ModelNotReady, ShuttingDown
from service.model_config import ModelPolicy, discover, read_model_config
from service.repository import ModelInfo, ModelVersion, read_metadata, versions_in
from service.servable import Servable, ServableState

_log = logging.getLogger(__name__)

BatchMaker = Callable[[ModelInfo], NDArray[np.float32]]


def _version_stamp(version_dir: Path) -> float:
    """Latest mtime in a version directory: a re-exported (fixed) version gets another try."""
    stamps = [p.stat().st_mtime for p in version_dir.rglob("*") if p.is_file()]
    return max(stamps, default=0.0)


class ModelManager:
    """Owns every Servable of this worker; safe to call from request threads."""

    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        self.settings = settings
        self._fixed_backend = backend
        self._single = backend is not None or settings.backend != "tensorflow_local"
        self._servables: dict[str, list[Servable]] = {}
        self._policies: dict[str, ModelPolicy] = {}
        self._failed: dict[tuple[str, int], float] = {}
        self.errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._first_pass = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        target = self._run_single if self._single else self._run_repository
        self._thread = threading.Thread(target=target, name="model-manager", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float | None = None) -> None:
        """Stop watching; drain and unload every version (worker exit, test teardown)."""
        self._stop.set()
        with self._lock:
            everything = [s for servables in self._servables.values() for s in servables]
        for servable in everything:
            servable.unload(timeout_s)

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Block until every model has an AVAILABLE version; False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if self.ready:
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self._stop.wait(min(0.05, remaining) if remaining is not None else 0.05)

    @property
    def ready(self) -> bool:
        """Ready when the first load pass is done and every model has an available version."""
        if not self._first_pass.is_set():
            return False
        with self._lock:
            groups = list(self._servables.values())
        return bool(groups) and all(any(s.available for s in group) for group in groups)

    def _publish_readiness(self) -> None:
        with self._lock:
            groups = {name: list(group) for name, group in self._servables.items()}
        for name, group in groups.items():
            metrics.READY.labels(name).set(1 if any(s.available for s in group) else 0)

    def not_ready_reason(self) -> str | None:
        if self.ready:
            return None
        if self.errors:
            return "; ".join(f"{name}: {error}" for name, error in sorted(self.errors.items()))
        return "loading"

    # --- single servable (TF Serving over gRPC, or an injected backend) -------------------------

    def _run_single(self) -> None:
        name = self.settings.model_name
        backend = self._fixed_backend or load_backend(self.settings)
        pause_s = 0.5
        while not self._stop.is_set():
            servable = Servable(self.settings, backend, name, self.settings.model_version)
            with self._lock:
                self._servables[name] = [servable]
            try:
                servable.load()
                self.errors.pop(name, None)
                self._first_pass.set()
                self._publish_readiness()
                return
            except Exception:  # noqa: BLE001 - reported through errors and /readyz
                self.errors[name] = servable.error or "load failed"
                _log.error("model %s failed to load: %s", name, servable.error)
            self._first_pass.set()
            self._publish_readiness()
            self._stop.wait(pause_s)
            pause_s = min(pause_s * 2, self.settings.load_retry_max_s)

    # --- repository watcher (embedded backend) --------------------------------------------------

    def _run_repository(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile()
            except Exception:  # noqa: BLE001 - a bad config file must not kill the watcher
                _log.exception("repository reconcile failed")
            self._first_pass.set()
            self._publish_readiness()
            if self.settings.repository_poll_interval_s <= 0:
                return
            self._stop.wait(self.settings.repository_poll_interval_s)

    def _read_policies(self) -> list[ModelPolicy]:
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
        policies = {policy.name: policy for policy in self._read_policies()}
        self._policies = policies
        for name in set(self._servables) - set(policies):
            self._retire(name, self._servables.get(name, []))
            with self._lock:
                self._servables.pop(name, None)
        for policy in policies.values():
            self._reconcile_model(policy)

    def _reconcile_model(self, policy: ModelPolicy) -> None:
        wanted = policy.select(versions_in(policy.base_path))
        with self._lock:
            group = list(self._servables.get(policy.name, []))
        live = {s.version for s in group if s.state in (ServableState.LOADING, ServableState.AVAILABLE)}
        for version in wanted:
            if version in live or self._stop.is_set():
                continue
            version_dir = policy.base_path / str(version)
            stamp = _version_stamp(version_dir)
            if self._failed.get((policy.name, version)) == stamp:
                continue  # the same broken files: do not retry until they change
            self._load_version(policy.name, version, version_dir, stamp)
        with self._lock:
            group = list(self._servables.get(policy.name, []))
        # Unload what the policy no longer wants, but never the last available version: a broken
        # new version must not take the model down.
        if any(s.available and s.version in wanted for s in group):
            self._retire(policy.name, [s for s in group if s.version not in wanted])
        with self._lock:
            self._servables[policy.name] = [
                s for s in self._servables.get(policy.name, [])
                if s.state is not ServableState.END or (s.error and s.version in wanted)
            ]

    def _load_version(self, name: str, version: int, version_dir: Path, stamp: float) -> None:
        from service.backends.tensorflow_local import TensorflowLocalBackend

        try:
            metadata = read_metadata(version_dir)
        except ValueError as err:  # unreadable metadata.json: the signature alone must do
            _log.warning("model %s version %d: bad metadata.json: %s", name, version, err)
            metadata = {}
        model_version = ModelVersion(name, version, version_dir, metadata)
        servable = Servable(self.settings, TensorflowLocalBackend(self.settings, model_version), name, version)
        with self._lock:
            group = [s for s in self._servables.get(name, []) if s.version != version]  # drop old failures
            self._servables[name] = [*group, servable]
        try:
            servable.load()
            self._failed.pop((name, version), None)
            self.errors.pop(name, None)
        except Exception:  # noqa: BLE001 - reported; the previous version keeps serving
            self._failed[(name, version)] = stamp
            self.errors[name] = f"version {version}: {servable.error}"
            _log.error("model %s version %d failed to load: %s", name, version, servable.error)

    def _retire(self, name: str, servables: list[Servable]) -> None:
        for servable in servables:
            if servable.state is ServableState.AVAILABLE:
                _log.info("unloading model %s version %s", name, servable.version)
                servable.unload(self.settings.request_timeout_s)

    # --- request path ---------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._servables)

    def default_model(self) -> str:
        names = self.model_names()
        if self.settings.model_name in names or len(names) != 1:
            return self.settings.model_name
        return names[0]

    def versions(self, name: str) -> list[Servable]:
        """Every servable of a model, for status routes; ModelNotFound if unknown."""
        with self._lock:
            group = self._servables.get(name)
        if group is None:
            raise ModelNotFound(f"model '{name}' is not served here (serving {self.model_names()})")
        return sorted(group, key=lambda s: s.version or 0)

    def get(self, name: str | None = None, version: int | None = None, label: str | None = None) -> Servable:
        """The servable a request should use: pinned version, label, or the newest available."""
        name = name or self.default_model()
        group = self.versions(name)
        if label is not None:
            policy = self._policies.get(name)
            if policy is None or label not in policy.labels:
                raise ModelNotFound(f"model '{name}' has no version label '{label}'")
            version = policy.labels[label]
        if version is not None:
            matches = [s for s in group if s.version == version]
            if not matches:
                raise ModelNotFound(f"model '{name}' has no version {version}")
            if not matches[-1].available:
                raise ModelNotReady(f"model '{name}' version {version} is {matches[-1].state.value}")
            return matches[-1]
        available = [s for s in group if s.available]
        if not available:
            reason = self.errors.get(name)
            raise ModelNotReady(f"model '{name}' is not ready" + (f" ({reason})" if reason else ""))
        return max(available, key=lambda s: s.version or 0)

    def infer(
        self, make_batch: BatchMaker, *, count: int, name: str | None = None, version: int | None = None,
        label: str | None = None, deadline: float,
    ) -> tuple[NDArray[np.float32], ModelInfo, list[int]]:
        """Prepare images for the chosen version and run them; returns (outputs, info, batch ids).

        A request that picked a version just as it was being swapped out is re-routed once to
        the new version instead of failing (it was accepted; it must not be lost).
        """
        prepared: dict[tuple[int, int, int], NDArray[np.float32]] = {}
        for attempt in range(2):
            servable = self.get(name, version, label)
            info = servable.info
            assert info is not None
            shape = (info.height, info.width, info.channels)
            batcher = servable.batcher
            announced = 0
            if batcher is not None:
                batcher.ensure_room(count)
            if shape not in prepared:
                if batcher is not None:
                    batcher.announce(count)
                    announced = count
                try:
                    prepared[shape] = make_batch(info)
                except BaseException:
                    if batcher is not None:
                        batcher.withdraw(announced)
                    raise
            try:
                outputs, batch_ids = servable.run(prepared[shape], deadline - time.monotonic(), announced)
                return outputs, info, batch_ids
            except (ShuttingDown, ModelNotReady):
                if attempt == 1 or version is not None or label is not None:
                    raise
                _log.info("model %s version %s went away mid-request; re-routing", servable.name, info.version)
        raise AssertionError("unreachable")

    def describe(self) -> dict[str, Any]:
        """Every model's versions, states, errors and batching, for /status."""
        with self._lock:
            groups = {name: list(group) for name, group in self._servables.items()}
        return {
            "ready": self.ready,
            "backend": self.settings.backend if self._fixed_backend is None else self._fixed_backend.name,
            "default_model": self.default_model(),
            "models": {
                name: {
                    "versions": [s.describe() for s in group],
                    "signature": next((s.info.describe() for s in reversed(group) if s.info), None),
                    "devices": next((getattr(s.backend, "devices", []) for s in group), []),
                }
                for name, group in groups.items()
            },
        }


def get_manager() -> ModelManager:
    """The current app's ModelManager (flaskr's `get_db()` pattern)."""
    manager: ModelManager = current_app.extensions["serving"]
    return manager
