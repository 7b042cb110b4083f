"""The worker's model registry: which versions are loaded, routing, readiness and /status.

Servables are put here by `service.models.loader` (a background thread); request threads read
them through `get` and `versions`. Routing follows TF Serving: a pinned version, a version
label from `models.config`, or the newest AVAILABLE version.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from service import metrics
from service.backends import Backend
from service.config import Settings
from service.errors import ModelNotFound, ModelNotReady
from service.models.policy import ModelPolicy
from service.models.servable import Servable


class ModelManager:
    """Owns every Servable of this worker; safe to call from request threads."""

    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        self.settings = settings
        self.fixed_backend = backend
        self.errors: dict[str, str] = {}
        """The latest load error per model, for /readyz and logs."""
        self._servables: dict[str, list[Servable]] = {}
        self._policies: dict[str, ModelPolicy] = {}
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.first_pass = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start loading in the background (see `service.models.loader`)."""
        from service.models.loader import run_loader

        self._thread = threading.Thread(target=run_loader, args=(self,), name="model-manager", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float | None = None) -> None:
        """Stop watching; drain and unload every version (worker exit, test teardown)."""
        self.stopping.set()
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
            self.stopping.wait(min(0.05, remaining) if remaining is not None else 0.05)

    @property
    def ready(self) -> bool:
        """Ready when the first load pass is done and every model has an available version."""
        if not self.first_pass.is_set():
            return False
        with self._lock:
            groups = list(self._servables.values())
        return bool(groups) and all(any(s.available for s in group) for group in groups)

    def publish_readiness(self) -> None:
        """Set the per-model readiness gauge."""
        with self._lock:
            groups = {name: list(group) for name, group in self._servables.items()}
        for name, group in groups.items():
            metrics.READY.labels(name).set(1 if any(s.available for s in group) else 0)

    def not_ready_reason(self) -> str | None:
        """Why /readyz fails: the load errors, or 'loading'; None when ready."""
        if self.ready:
            return None
        if self.errors:
            return "; ".join(f"{name}: {error}" for name, error in sorted(self.errors.items()))
        return "loading"

    # --- what the loader changes ----------------------------------------------------------------

    def servables_of(self, name: str) -> list[Servable]:
        """A snapshot of one model's servables (empty when unknown)."""
        with self._lock:
            return list(self._servables.get(name, []))

    def replace_servables(self, name: str, servables: list[Servable] | None) -> None:
        """Publish a model's servables (None removes the model)."""
        with self._lock:
            if servables is None:
                self._servables.pop(name, None)
            else:
                self._servables[name] = servables

    def set_policies(self, policies: dict[str, ModelPolicy]) -> None:
        """The version policies in force (for version labels)."""
        self._policies = policies

    # --- routing --------------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._servables)

    def default_model(self) -> str:
        """The model of requests that name none: the configured one, or the only one served."""
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

    def describe(self) -> dict[str, Any]:
        """Every model's versions, states, errors and batching, for /status."""
        with self._lock:
            groups = {name: list(group) for name, group in self._servables.items()}
        return {
            "ready": self.ready,
            "backend": self.settings.backend if self.fixed_backend is None else self.fixed_backend.name,
            "default_model": self.default_model(),
            "models": {
                name: {
                    "versions": [s.describe() for s in group],
                    "signature": next((s.info.describe() for s in reversed(group) if s.info), None),
                    "devices": next((s.backend.devices for s in group), []),
                }
                for name, group in groups.items()
            },
        }
