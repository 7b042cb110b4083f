"""Tiling: a field much larger than the model is cut into model-sized tiles instead of shrunk."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest
from flask import Flask

from service.tiling import plan
from tests.conftest import serve_committed_model, tiff_bytes
from training import synthetic

TILE_H, TILE_W = 1024, 1360


def test_windows_cover_the_image_flush_with_its_edges() -> None:
    grid = plan(4096, 4096, TILE_H, TILE_W, "auto", 1.5, 0.1)
    assert grid is not None and grid.tops[0] == 0 and grid.tops[-1] == 4096 - TILE_H
    assert grid.lefts[-1] == 4096 - TILE_W
    covered = np.zeros((4096, 4096), bool)
    for top, left in grid.windows():
        covered[top:top + TILE_H, left:left + TILE_W] = True
    assert covered.all()
    steps = np.diff(grid.lefts)
    assert steps.max() <= int(TILE_W * 0.9)  # neighbours overlap by at least 10%


def test_when_an_image_is_tiled() -> None:
    assert plan(1024, 1360, TILE_H, TILE_W, "auto", 1.5, 0.1) is None  # the model's own size
    assert plan(1500, 1900, TILE_H, TILE_W, "auto", 1.5, 0.1) is None  # < 1.5x on both sides: resized
    assert plan(2048, 2048, TILE_H, TILE_W, "auto", 1.5, 0.0).count == 2 * 2  # type: ignore[union-attr]
    assert plan(2000, 2000, TILE_H, TILE_W, "always", 1.5, 0.0).count == 2 * 2  # type: ignore[union-attr]
    assert plan(9000, 9000, TILE_H, TILE_W, "never", 1.5, 0.1) is None
    assert plan(800, 9000, TILE_H, TILE_W, "always", 1.5, 0.1) is None  # shorter than a tile


def _montage(infected_at: int | None) -> np.ndarray:
    """A 4 x 3 mosaic of generated 1360x1024 fields (4096 x 4080 px) on one intensity scale,
    with one small influenza focus (severity 1) in field `infected_at`."""
    fields = []
    for index in range(12):
        kind = synthetic.INFLUENZA if index == infected_at else synthetic.UNINFECTED
        pixels, _ = synthetic.generate(2_000_500 + index, kind, 1 if kind == synthetic.INFLUENZA else 0)
        values = pixels.astype(np.float32)
        low, high = np.percentile(values, (0.5, 99.5))
        fields.append(np.clip((values - low) / (high - low) * 3000 + 500, 0, 4095).astype(np.uint16))
    return np.concatenate([np.concatenate(fields[row * 3:row * 3 + 3], axis=1) for row in range(4)], axis=0)


@pytest.fixture(scope="module")
def app() -> Iterator[Flask]:
    yield from serve_committed_model(
        model_version=1, tile_overlap=0.0, max_image_pixels=120_000_000, max_decoded_image_bytes=768 << 20,
        decode_budget_bytes=1 << 30, max_body_bytes=256 << 20, request_timeout_s=600)


def test_a_small_focus_that_resizing_misses_is_found_by_tiling(app: Flask) -> None:
    body = tiff_bytes(_montage(infected_at=5))
    client = app.test_client()
    resized = client.post("/predict?tiling=never", data=body, content_type="image/tiff").json["predictions"][0]
    assert resized["label"] == "uninfected" and "tiling" not in resized
    tiled = client.post("/predict", data=body, content_type="image/tiff").json["predictions"][0]
    assert tiled["label"] == "infected" and tiled["tiling"]["grid"] == [4, 3]
    assert tiled["tiling"]["p_max"] > 0.9
    assert tiled["tiling"]["p_grid"][1][2] == pytest.approx(tiled["tiling"]["p_max"], abs=1e-6)
    assert tiled["tiling"]["positive_fraction"] == pytest.approx(1 / 12)
    assert tiled["probabilities"]["infected"] == pytest.approx(tiled["tiling"]["p_max"], abs=1e-6)
    clean = client.post("/predict", data=tiff_bytes(_montage(infected_at=None)), content_type="image/tiff").json
    assert clean["predictions"][0]["label"] == "uninfected" and clean["predictions"][0]["tiling"]["p_max"] < 0.5


def test_a_10000_pixel_montage_is_tiled_within_the_memory_budget(app: Flask) -> None:
    rng = np.random.default_rng(0)
    montage = rng.integers(500, 3500, size=(10_000, 10_000), dtype=np.uint16)
    body = tiff_bytes(montage)
    del montage
    tracemalloc.start()
    try:
        answer = app.test_client().post("/predict", data=body, content_type="image/tiff")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer.status_code == 200, answer.json
    tiling = answer.json["predictions"][0]["tiling"]
    assert tiling["grid"] == [10, 8]  # ceil(10000 / 1024) rows, ceil(10000 / 1360) columns, no overlap
    # Measured 663 MiB: the body as the server reads it (200 MB, plus the test client's copy)
    # and the decoded field (200 MB) dominate; tiles are prepared one batch at a time (8 x 5.6
    # MB): all 80 at once would add 450 MB, resizing the whole field as float32 another 400 MB.
    assert peak < 800 * 2**20, f"peak {peak / 2**20:.0f} MiB"
