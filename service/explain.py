"""Explanations: where the model saw CPE, as the Grad-CAM map of the positive class.

    Pipeline.run(explain=True)  ->  Explainer.run  ->  backend.explain (the `explain` signature)

The map is computed inside the SavedModel (`training.gradcam`: a signature beside
`serving_default`), so the in-process backend and TF Serving answer the same map; a version
exported without it answers 501 `explain_unavailable`. This module bounds how many run at
once, and renders a map as a PNG overlay on the image the model saw.
"""

from __future__ import annotations

import io
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from service import metrics
from service.errors import BackendTimeout, ExplainUnavailable, ModelNotReady, QueueFull
from service.models.servable import Servable
from service.models.signature import CAM_OUTPUT, EXPLAIN_SIGNATURE, LOG_ODDS_OUTPUT, ModelInfo
from service.preprocessing import prepare_into
from service.tiling import TileSummary, crop, plan

METHOD = "grad-cam"


@dataclass(frozen=True)
class Explanation:
    """One image's map: Grad-CAM of the positive class on the last convolutional layer."""

    cam: NDArray[np.float32]
    """(rows, columns) in [0, 1], 1 at the map's peak; all 0 when nothing speaks for the class."""
    log_odds: float
    """The positive class's log-odds, the score whose gradient weighs the feature maps."""
    image: NDArray[np.float32]
    """The (H, W, C) model input explained, raw intensities (the overlay is drawn on it)."""
    tile: int | None = None
    """For a tiled image: the tile explained (its most infected one, which made the call)."""
    cell_origin_px: tuple[float, float] | None = None
    """[y, x] of the first cell's receptive-field centre on the input (metadata.json `explain`);
    None: unknown, the map is stretched over the input."""
    cell_stride_px: tuple[float, float] | None = None


class Explainer:
    """Runs explanations for one worker, at most `max_concurrency` at a time.

    NOTE: explanations do not go through the micro-batcher. The batcher merges rows for one
    signature, and its warm-up cost curve, adaptive a·n+b fit and batch-thread choice are all
    measured on `serving_default`; a backward pass (~2-3x a prediction's compute, plus the
    gradients' memory) queued among predictions would make interactive requests wait behind
    it and corrupt those measurements. The predictions of an explained request still go
    through the batcher like any other; only the map is computed here, in the request's
    thread, one request's images per call. A request that cannot get a slot within
    `max_wait_s` (or its deadline) is shed with 503 `queue_full` + Retry-After, as the
    batcher sheds a full queue.
    """

    def __init__(self, max_concurrency: int, max_wait_s: float, chunk: int) -> None:
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._max_wait_s = max_wait_s
        self._chunk = chunk
        self._last_s = 0.0

    def run(self, servable: Servable, rows: NDArray[np.float32], large: dict[int, NDArray[np.generic]],
            tiles: list[TileSummary | None], deadline: float, tiling_factor: float,
            tile_overlap: float) -> list[Explanation]:
        """Explain each prepared row (a tiled image's row: its best tile).

        Raises:
            ExplainUnavailable: the version has no explain signature (501).
            ModelNotReady: the version was unloaded since its prediction (503).
            QueueFull: no slot within the wait (503 + Retry-After).
            BackendTimeout: the deadline passed before the map was computed (504).
        """
        info = servable.info
        assert info is not None, "an available servable has its signature"
        explain = getattr(servable.backend, "explain", None)
        if info.explain_signature is None or explain is None:
            raise ExplainUnavailable(f"model {info.name} version {info.version} has no "
                                     f"'{EXPLAIN_SIGNATURE}' signature; re-export it with training.add_explain")
        if not servable.available:  # unloaded since the prediction: its backend is closed
            raise ModelNotReady(f"model {info.name} version {info.version} is not available")
        rows, tile_of = _best_tiles(rows, info, large, tiles, tiling_factor, tile_overlap)
        wait_s = min(self._max_wait_s, deadline - time.monotonic())
        if not self._slots.acquire(timeout=max(wait_s, 0.0)):
            raise QueueFull("explanations are busy; retry shortly", retry_after_s=max(1, math.ceil(self._last_s)))
        started = time.monotonic()
        try:
            parts = []
            for start in range(0, len(rows), self._chunk):
                if time.monotonic() >= deadline:
                    raise BackendTimeout(f"no explanation in time (image {start} of {len(rows)})")
                parts.append(explain(rows[start:start + self._chunk]))
        finally:
            self._slots.release()
            self._last_s = time.monotonic() - started
        metrics.EXPLAIN_LATENCY.labels(info.name).observe(self._last_s)
        cams = np.concatenate([part[CAM_OUTPUT] for part in parts])
        log_odds = np.concatenate([part[LOG_ODDS_OUTPUT] for part in parts])
        geometry = info.metadata.explain
        origin = stride = None
        if geometry.cell_origin_px and geometry.cell_stride_px:
            (top, left), (down, across) = geometry.cell_origin_px, geometry.cell_stride_px
            origin, stride = (top, left), (down, across)
        return [Explanation(cams[i].astype(np.float32), float(log_odds[i]), rows[i], tile_of.get(i), origin, stride)
                for i in range(len(rows))]


def _best_tiles(rows: NDArray[np.float32], info: ModelInfo, large: dict[int, NDArray[np.generic]],
                tiles: list[TileSummary | None], factor: float,
                overlap: float) -> tuple[NDArray[np.float32], dict[int, int]]:
    """The rows to explain: a tiled image's slot held its first tile; its best tile replaces it."""
    tile_of = {index: summary.best_tile for index, summary in enumerate(tiles)
               if summary is not None and index in large}
    if not tile_of:
        return rows, {}
    rows = rows.copy()
    for index, best in tile_of.items():
        pixels = large[index]
        grid = plan(pixels.shape[0], pixels.shape[1], info.height, info.width, "always", factor, overlap)
        assert grid is not None, "a tiled image has a grid"
        prepare_into(crop(pixels, grid, best), rows[index])
    return rows, tile_of


def upsample(cam: NDArray[np.float32], height: int, width: int) -> NDArray[np.float32]:
    """The coarse map stretched bilinearly over an image of `height` x `width` (Grad-CAM's usual
    display, for a model whose cells' positions are unknown)."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(cam, dtype=np.float32))
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def place(cam: NDArray[np.float32], height: int, width: int, origin: Sequence[float], stride: Sequence[float],
          scale: float = 1.0) -> NDArray[np.float32]:
    """The map over the input (`scale` 1) or a resized copy of it, each cell at its receptive
    field's centre (`origin` + i·`stride` input pixels, [y, x]), bilinear between centres and
    constant beyond the outer ones."""
    def axis(size: int, cells: int, start: float, step: float) -> tuple[NDArray[np.intp], NDArray[np.intp],
                                                                         NDArray[np.float64]]:
        position = np.clip(((np.arange(size) + 0.5) / scale - 0.5 - start) / step, 0, cells - 1)
        low = np.floor(position).astype(np.intp)
        return low, np.minimum(low + 1, cells - 1), position - low

    r0, r1, fr = axis(height, cam.shape[0], origin[0], stride[0])
    c0, c1, fc = axis(width, cam.shape[1], origin[1], stride[1])
    top = cam[r0][:, c0] * (1 - fc) + cam[r0][:, c1] * fc
    bottom = cam[r1][:, c0] * (1 - fc) + cam[r1][:, c1] * fc
    return (top * (1 - fr)[:, None] + bottom * fr[:, None]).astype(np.float32)


def heatmap(explanation: Explanation, height: int, width: int) -> NDArray[np.float32]:
    """The map over the explained image shown at `height` x `width`: placed when the model's
    metadata says where its cells lie, stretched otherwise."""
    if explanation.cell_origin_px is None or explanation.cell_stride_px is None:
        return upsample(explanation.cam, height, width)
    scale = height / explanation.image.shape[0]
    return place(explanation.cam, height, width, explanation.cell_origin_px, explanation.cell_stride_px, scale)


def overlay_png(explanation: Explanation, max_side_px: int) -> bytes:
    """The map as a heat overlay (transparent where 0, red-yellow towards 1) on the image the
    model saw, shown with the model's own percentile stretch, at most `max_side_px` a side."""
    from PIL import Image

    image = explanation.image.mean(axis=-1) if explanation.image.ndim == 3 else explanation.image
    low, high = np.percentile(image[::4, ::4], (0.5, 99.5))
    gray = np.clip((image - low) / (high - low if high > low else 1.0), 0, 1)
    height, width = gray.shape
    scale = min(1.0, max_side_px / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    gray = np.asarray(Image.fromarray((gray * 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR),
                      dtype=np.float32) / 255
    heat = np.clip(heatmap(explanation, size[1], size[0]), 0, 1)
    colour = np.stack([np.ones_like(heat), np.clip(2 * heat - 1, 0, 1), np.zeros_like(heat)], axis=-1)
    alpha = 0.6 * heat[..., None]
    rgb = (1 - alpha) * gray[..., None] + alpha * colour
    buffer = io.BytesIO()
    # NOTE: zlib level 1: a noisy 680x512 field encodes in ~70 ms instead of ~290 ms (level 6)
    # for 4% more bytes.
    Image.fromarray((rgb * 255 + 0.5).astype(np.uint8)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
