"""The model lifecycle without HTTP: repository, metadata, version policy, servables, routing,
the pipeline's re-route on a swap, and hot reload of real (tiny) SavedModels."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from service.config import Settings
from service.errors import ModelNotFound, ModelNotReady
from service.models import (
    METADATA_FILE,
    ModelManager,
    Servable,
    ServableState,
    VersionMetadata,
    list_models,
    read_metadata,
    resolve,
)
from service.models.loader import RepositoryWatcher
from service.models.metadata import check_preprocessing_skew
from service.models.policy import ModelPolicy, read_model_config
from service.models.repository import versions_in
from service.pipeline import ModelRoute, Pipeline
from tests.fakes import FAKE_HEIGHT, FAKE_WIDTH, FakeBackend, expected_probabilities
from tests.models import export_tiny_model


def _fake_version_dir(root: Path, name: str, version: int, *, complete: bool = True) -> Path:
    path = root / name / str(version)
    path.mkdir(parents=True)
    if complete:
        (path / "saved_model.pb").write_bytes(b"")
    return path


# --- repository and metadata -----------------------------------------------------------------


def test_repository_lists_only_complete_numbered_versions(tmp_path: Path) -> None:
    _fake_version_dir(tmp_path, "cpe", 1)
    _fake_version_dir(tmp_path, "cpe", 3)
    _fake_version_dir(tmp_path, "cpe", 4, complete=False)  # still being copied
    (tmp_path / "cpe" / ".2.tmp").mkdir()
    _fake_version_dir(tmp_path, "empty", 1, complete=False)
    assert versions_in(tmp_path / "cpe") == [1, 3]
    assert list_models(tmp_path) == ["cpe"]
    assert resolve(tmp_path, "cpe").version == 3
    assert resolve(tmp_path, "cpe", 1).path == tmp_path / "cpe" / "1"
    with pytest.raises(ModelNotFound, match="no version 4"):
        resolve(tmp_path, "cpe", 4)
    with pytest.raises(ModelNotFound):
        resolve(tmp_path, "empty")


def test_metadata_is_typed_keeps_unknown_blocks_and_refuses_garbage(tmp_path: Path) -> None:
    version_dir = _fake_version_dir(tmp_path, "cpe", 1)
    assert read_metadata(version_dir) == VersionMetadata()  # exported elsewhere: no metadata
    (version_dir / METADATA_FILE).write_text(json.dumps({
        "classes": ["uninfected", "infected"], "positive_class": "infected", "decision_threshold": 0.3,
        "input": {"tensor": "image", "height": 1024}, "evaluation": {"accuracy": 0.99},
    }))
    metadata = read_metadata(version_dir)
    assert metadata.classes == ["uninfected", "infected"] and metadata.input.tensor == "image"
    assert metadata.decision_threshold == 0.3 and metadata.model_extra == {"evaluation": {"accuracy": 0.99}}
    (version_dir / METADATA_FILE).write_text('{"decision_threshold": 7}')
    with pytest.raises(ValueError, match="decision_threshold"):
        read_metadata(version_dir)
    (version_dir / METADATA_FILE).write_text("{not json")
    with pytest.raises(ValueError):
        read_metadata(version_dir)
    assert resolve(tmp_path, "cpe").metadata == VersionMetadata()  # served from its signature alone


def test_preprocessing_skew_is_reported_and_counted() -> None:
    skewed = VersionMetadata.model_validate({"preprocessing": {"version": "0"}})
    assert "preprocessing v0" in (check_preprocessing_skew("skewed", 7, skewed) or "")
    assert REGISTRY.get_sample_value("serving_preprocessing_skew", {"model": "skewed", "version": "7"}) == 1
    assert check_preprocessing_skew("fine", 1, VersionMetadata()) is None


# --- version policy from TF Serving's models.config -------------------------------------------

MODELS_CONFIG = """
model_config_list {
  config { name: "latest2" base_path: "/nowhere/latest2" model_platform: "tensorflow"
           model_version_policy { latest { num_versions: 2 } } }
  config { name: "pinned" base_path: "pinned" model_platform: "tensorflow"
           model_version_policy { specific { versions: 1 versions: 3 } }
           version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 3 } }
  config { name: "every" model_platform: "tensorflow" model_version_policy { all {} } }
  config { name: "plain" base_path: "/models/plain" model_platform: "tensorflow" }
}
"""


def test_models_config_policies_labels_and_base_paths(tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    config.write_text(MODELS_CONFIG)
    policies = {p.name: p for p in read_model_config(config, tmp_path / "repo")}
    assert policies["latest2"].kind == "latest" and policies["latest2"].num_versions == 2
    assert policies["pinned"].kind == "specific" and policies["pinned"].versions == {1, 3}
    assert policies["pinned"].labels == {"stable": 1, "canary": 3}
    assert policies["every"].kind == "all" and policies["plain"].kind == "latest"
    # A base path that does not exist here (TF Serving's /models mount) falls back to the repository.
    assert policies["latest2"].base_path == tmp_path / "repo" / "latest2"
    assert policies["every"].base_path == tmp_path / "repo" / "every"
    on_disk = [1, 2, 3, 5]
    assert policies["latest2"].select(on_disk) == [3, 5]
    assert policies["pinned"].select(on_disk) == [1, 3]
    assert policies["every"].select(on_disk) == on_disk
    assert policies["plain"].select(on_disk) == [5]
    assert ModelPolicy("x", tmp_path, "specific", versions=frozenset({9})).select(on_disk) == []


# --- servables and routing --------------------------------------------------------------------


def _settings(**overrides: object) -> Settings:
    return Settings(**{"model_name": "fake", "warmup": False, "max_batch_delay_ms": 1, **overrides})


def _servable(version: int, settings: Settings, backend: FakeBackend | None = None,
              kind: type[Servable] = Servable) -> Servable:
    backend = backend or FakeBackend()
    backend.info = backend.info.__class__(**{**backend.info.__dict__, "version": version})
    servable = kind(settings, backend, "fake", version)
    servable.load()
    return servable


def test_servable_warms_every_batch_size_then_serves_and_drains_on_unload() -> None:
    backend = FakeBackend(delay_s=0.01)  # a fixed cost per call: batching pays, the maximum is kept
    settings = _settings(warmup=True, max_batch_size=4, max_queue_size=64, max_images_per_request=64)
    servable = _servable(1, settings, backend)
    assert servable.state is ServableState.AVAILABLE and servable.warmup_source == "synthetic"
    # Powers of two timed (a compiling call, then best of two), then the other shapes once.
    assert backend.batch_sizes == [1, 1, 1, 2, 2, 2, 4, 4, 4, 3]
    assert servable.batch_size == 4 and servable.batcher is not None and servable.batcher.max_batch_size == 4
    backend.gate = threading.Event()
    rows = np.full((2, FAKE_HEIGHT, FAKE_WIDTH, 1), 123.0, np.float32)
    with servable.reserve(2) as reservation:
        results: list[np.ndarray] = []
        worker = threading.Thread(target=lambda: results.append(servable.run(rows, reservation, 5)[0]["probabilities"]))
        worker.start()
        assert backend.started.wait(2)
    unloading = threading.Thread(target=servable.unload, args=(5,))
    unloading.start()
    time.sleep(0.05)
    assert servable.state is ServableState.UNLOADING  # waits for the queued request
    backend.gate.set()
    worker.join(5)
    unloading.join(5)
    assert servable.state is ServableState.END
    np.testing.assert_allclose(results[0], expected_probabilities(rows))
    with pytest.raises(ModelNotReady):
        servable.reserve(1)


class PerImageCost(FakeBackend):
    """A model whose cost per image is flat in the batch size (the paper CNN on a CPU)."""

    def predict(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(0.005 * len(batch))
        return super().predict(batch)


def test_a_flat_cost_per_image_batches_at_one_and_stops_timing_early() -> None:
    backend = PerImageCost()
    servable = _servable(1, _settings(warmup=True, max_batch_size=8, max_queue_size=64,
                                      max_images_per_request=64), backend)
    assert servable.batch_size == 1 and servable.batcher is not None and servable.batcher.max_batch_size == 1
    assert backend.batch_sizes == [1, 1, 1, 2, 2, 2]  # batch 2 cost as much per image: no 4 or 8
    assert "ms per image" in servable.describe()["batching"]["batch_size_chosen_by"]
    fixed = _servable(2, _settings(warmup=True, max_batch_size=8, auto_batch_size=False, max_queue_size=64,
                                   max_images_per_request=64), PerImageCost())
    assert fixed.batch_size == 8


def test_warm_up_stops_doubling_before_a_batch_over_the_memory_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """TF's CPU pool keeps its peak for life: a batch predicted to need more activation memory than
    SERVING_BATCH_MEMORY_BYTES is never run, even where batching would pay."""
    backend = FakeBackend(delay_s=0.01)  # a fixed cost per call: without a budget, 8 is kept
    mib = 2**20

    def memory(field: str = "VmHWM") -> int:  # 100 MiB of activations per image of the largest call
        return 1000 * mib + (100 * mib * max(backend.batch_sizes, default=0) if field == "VmHWM" else 0)

    monkeypatch.setattr("service.models.servable.process_memory_bytes", memory)
    settings = _settings(warmup=True, max_batch_size=8, max_queue_size=64, max_images_per_request=64,
                         batch_memory_bytes=300 * mib)
    servable = _servable(1, settings, backend)
    assert backend.batch_sizes == [1, 1, 1, 2, 2, 2]  # 4 would need ~400 MiB
    assert servable.batch_size == 2
    assert "a batch of 4 would need ~400 MiB" in servable.describe()["batching"]["batch_size_chosen_by"]
    unbounded = FakeBackend(delay_s=0.01)
    _servable(2, _settings(warmup=True, max_batch_size=8, max_queue_size=64, max_images_per_request=64,
                           batch_memory_bytes=0), unbounded)
    assert max(unbounded.batch_sizes) == 8


def test_routing_pinned_labelled_newest_and_refusals() -> None:
    settings = _settings()
    manager = ModelManager(settings, FakeBackend())
    one, two, three = (_servable(v, settings) for v in (1, 2, 3))
    three.unload()
    manager.replace_servables("fake", [one, two, three])
    manager.set_policies({"fake": ModelPolicy("fake", Path("."), labels={"stable": 1})})
    manager.first_pass.set()
    assert manager.get().version == 2  # the newest AVAILABLE version
    assert manager.get("fake", 1).version == 1
    assert manager.get("fake", label="stable").version == 1
    with pytest.raises(ModelNotReady, match="version 3 is END"):
        manager.get("fake", 3)
    with pytest.raises(ModelNotFound, match="no version 9"):
        manager.get("fake", 9)
    with pytest.raises(ModelNotFound, match="label 'canary'"):
        manager.get("fake", label="canary")
    with pytest.raises(ModelNotFound, match="not served here"):
        manager.get("other")
    assert manager.ready and [s["version"] for s in manager.describe()["models"]["fake"]["versions"]] == [1, 2, 3]
    one.unload()
    two.unload()
    assert not manager.ready
    with pytest.raises(ModelNotReady):
        manager.get()


def test_pipeline_reroutes_a_request_caught_in_a_version_swap() -> None:
    settings = _settings()

    class SwappedOut(Servable):
        """Goes away between routing and submitting, as during a hot reload."""

        def run(self, rows, reservation, timeout_s):  # type: ignore[no-untyped-def]
            self.unload()
            return super().run(rows, reservation, timeout_s)

    old = _servable(1, settings)
    new_backend = FakeBackend()
    new = _servable(2, settings, new_backend, SwappedOut)
    manager = ModelManager(settings, FakeBackend())
    manager.replace_servables("fake", [old, new])
    pipeline = Pipeline(settings, manager)
    pixels = np.full((FAKE_HEIGHT, FAKE_WIDTH), 250, np.uint16)
    result = pipeline.run([pixels], ModelRoute(), time.monotonic() + 5)
    assert result.info.version == 1 and result.labels == ["uninfected"]
    assert new_backend.batch_sizes == []
    with pytest.raises(ModelNotReady):  # a pinned request is not re-routed
        pipeline.run([pixels], ModelRoute(version=2), time.monotonic() + 5)
    old.unload()


def test_decision_threshold_from_metadata_labels_the_positive_class() -> None:
    settings = _settings()
    backend = FakeBackend()
    metadata = VersionMetadata(classes=["uninfected", "infected"], positive_class="infected", decision_threshold=0.2)
    backend.info = backend.info.__class__(**{**backend.info.__dict__, "metadata": metadata})
    manager = ModelManager(settings, backend)
    manager.start()
    assert manager.wait_ready(5)
    pixels = np.full((FAKE_HEIGHT, FAKE_WIDTH), 250, np.uint16)  # p(infected) = 0.25
    result = Pipeline(settings, manager).run([pixels], ModelRoute(), time.monotonic() + 5)
    assert result.probabilities[0, 1] == pytest.approx(0.25) and result.labels == ["infected"]
    manager.close()


# --- hot reload of real SavedModels -------------------------------------------------------------


def test_watcher_loads_swaps_and_survives_a_broken_version(tmp_path: Path) -> None:
    export_tiny_model(tmp_path, "tiny", 1)
    settings = Settings(model_repository=tmp_path, model_name="tiny", warmup=True, max_batch_size=2,
                        max_queue_size=64, repository_poll_interval_s=0)
    manager = ModelManager(settings)
    watcher = RepositoryWatcher(manager)
    watcher.reconcile()
    manager.first_pass.set()
    assert manager.ready and manager.get().version == 1
    export_tiny_model(tmp_path, "tiny", 2, seed=1)
    watcher.reconcile()
    assert [s.version for s in manager.versions("tiny")] == [2]  # 1 unloaded after the swap
    broken = tmp_path / "tiny" / "3"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    watcher.reconcile()
    assert manager.get().version == 2 and "version 3" in manager.errors["tiny"]
    states = {s.version: s.state for s in manager.versions("tiny")}
    assert states == {2: ServableState.AVAILABLE, 3: ServableState.END}
    manager.close()
