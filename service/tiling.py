"""Tiling: a field much larger than the model's input is cut into model-sized tiles, not shrunk.

Resizing a 2048x2048 sCMOS frame or a stitched whole-well montage to 1360x1024 shrinks a small
CPE focus below what the model can see. Past `tiling_factor` times the input on a side, the
image is cut into input-sized windows at native resolution (overlapping by `overlap`, the last
window of a row or column flush with the edge), every window goes through the batcher as an
image of its own, and the answer aggregates them: the image is called by its most infected
tile, with the mean, the fraction of positive tiles and the grid of probabilities beside it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import NDArray

from service.errors import BackendTimeout
from service.preprocessing import prepare_into

if TYPE_CHECKING:
    from service.models.servable import Servable
    from service.models.signature import ModelInfo

TilingMode = Literal["auto", "always", "never"]


@dataclass(frozen=True)
class TileGrid:
    """Where the windows of one image lie: their top-left corners, row by row."""

    tops: tuple[int, ...]
    lefts: tuple[int, ...]
    height: int
    width: int

    @property
    def count(self) -> int:
        return len(self.tops) * len(self.lefts)

    def windows(self) -> list[tuple[int, int]]:
        return [(top, left) for top in self.tops for left in self.lefts]


def _starts(size: int, window: int, overlap: float) -> tuple[int, ...]:
    if size <= window:
        return (0,)
    stride = max(1, int(window * (1 - overlap)))
    count = math.ceil((size - window) / stride) + 1
    starts = [min(index * stride, size - window) for index in range(count)]
    return tuple(sorted(set(starts)))


def plan(height: int, width: int, tile_height: int, tile_width: int, mode: TilingMode, factor: float,
         overlap: float) -> TileGrid | None:
    """The tile grid for an image, or None when it is resized as a whole.

    `auto` tiles an image larger than `factor` times the model's input on either side; `always`
    tiles any image at least as large as the input on both sides (a smaller one is resized).
    """
    if mode == "never" or height < tile_height or width < tile_width:
        return None
    if mode == "auto" and height <= factor * tile_height and width <= factor * tile_width:
        return None
    return TileGrid(_starts(height, tile_height, overlap), _starts(width, tile_width, overlap), tile_height, tile_width)


def crop(pixels: NDArray[np.generic], grid: TileGrid, index: int) -> NDArray[np.generic]:
    """Window `index` (row-major) of the image, a view at native resolution."""
    top, left = grid.windows()[index]
    return pixels[top:top + grid.height, left:left + grid.width]


@dataclass(frozen=True)
class TileSummary:
    """One tiled image's answer: the grid of p(positive) and its aggregates."""

    grid_shape: tuple[int, int]
    p_grid: list[list[float]]
    p_max: float
    p_mean: float
    positive_fraction: float
    best_tile: int


def summarise(p_positive: NDArray[np.float32], positive: NDArray[np.bool_], grid: TileGrid) -> TileSummary:
    """Aggregate a tiled image's tiles (p of the positive class, and each tile's call)."""
    rows, columns = len(grid.tops), len(grid.lefts)
    return TileSummary(
        grid_shape=(rows, columns),
        p_grid=[[round(float(p), 6) for p in p_positive[r * columns:(r + 1) * columns]] for r in range(rows)],
        p_max=float(p_positive.max()),
        p_mean=float(p_positive.mean()),
        positive_fraction=float(positive.mean()),
        best_tile=int(np.argmax(p_positive)),
    )


def run_tiles(servable: Servable, info: ModelInfo, pixels: NDArray[np.generic], grid: TileGrid, deadline: float,
              chunk: int, background: bool = False) -> dict[str, NDArray[np.float32]]:
    """Every tile through the batcher, `chunk` at a time, each chunk prepared only when it is
    sent: a montage holds a batch of float32 tiles at once, not all of them, and other
    requests' images are batched between its chunks (its fair share, not the whole queue)."""
    parts: list[dict[str, NDArray[np.float32]]] = []
    for start in range(0, grid.count, chunk):
        count = min(chunk, grid.count - start)
        if deadline <= time.monotonic():
            raise BackendTimeout(f"no answer in time (tile {start} of {grid.count})")
        with servable.reserve(count, background) as reservation:
            rows = np.empty((count, info.height, info.width, info.channels), dtype=np.float32)
            for offset in range(count):
                prepare_into(crop(pixels, grid, start + offset), rows[offset])
            parts.append(servable.run(rows, reservation, deadline - time.monotonic()).outputs)
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
