"""The request pipeline, shared by every protocol and free of HTTP: inputs -> labelled outputs.

    view (service/api/*)  ->  Pipeline.run  ->  batcher (service/batching)  ->  backend

`Pipeline.run` routes to a model version, reserves room in its batcher, decodes and checks
each input and writes it straight into its slot of the request's batch, waits for the batched
model call, and labels the rows. Every protocol's view only parses its request into
`ImageInput`s and renders the `InferenceResult`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from service import metrics, tiling, tracing
from service.codecs.images import DecodeBudget, ImageLimits, decode_image
from service.config import Settings
from service.errors import (
    BackendTimeout,
    InvalidBase64,
    InvalidImageShape,
    ModelCallFailed,
    ModelNotReady,
    NonFiniteInput,
    ShuttingDown,
    TooManyImages,
)
from service.explain import Explainer, Explanation
from service.models import ModelInfo, ModelManager
from service.models.servable import Servable
from service.preprocessing import prepare_into
from service.quality import QcMode, QcVerdict, bit_depth, gate, gated
from service.tiling import TileSummary, TilingMode, run_tiles

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedImage:
    """An image as a request carries it: encoded bytes, and the TIFF page to read."""

    data: bytes
    page: int = 0


#: Encoded bytes, or pixels a client already decoded (TF Serving's numeric instances, Open
#: Inference Protocol tensors): (H, W) or (H, W, C).
ImageInput = EncodedImage | NDArray[np.generic]


@dataclass(frozen=True)
class ModelRoute:
    """Which model a request asked for: a name (default model when None), a version or a label."""

    name: str | None = None
    version: int | None = None
    label: str | None = None

    @property
    def pinned(self) -> bool:
        return self.version is not None or self.label is not None


@dataclass(frozen=True)
class InputRecord:
    """What one image was, as received and decoded: the provenance a lab records with its call."""

    encoded: bytes | None = field(repr=False, compare=False)
    """The bytes received (None for pixel arrays sent already decoded)."""
    shape: tuple[int, ...]
    dtype: str
    bit_depth: int | None

    _sha256: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def sha256(self) -> str | None:
        """Hashed only when an answer shows it (/predict): ~1.5 ms per 2.7 MB field that the
        TF Serving and v2 routes would otherwise pay for nothing. (Not `cached_property`: on
        Python 3.11 it takes one lock shared by every instance, which concurrent requests
        queued on.)"""
        if self._sha256 is None and self.encoded is not None:
            object.__setattr__(self, "_sha256", hashlib.sha256(self.encoded).hexdigest())  # frozen: a cache
        return self._sha256


@dataclass(frozen=True)
class InferenceResult:
    """A request's answer: one row of outputs and one label per image, in order.

    A label is None only for an image the QC gate rejected under `?qc=reject`; `qc` is None
    when the gate is off or the version has none.
    """

    probabilities: NDArray[np.float32]
    labels: list[str | None]
    class_names: tuple[str, ...]
    positive_column: int
    """The column of the positive class (p_infected), as `ModelInfo.decide` chose it."""
    info: ModelInfo
    batch_ids: list[int]
    qc: list[QcVerdict] | None = None
    inputs: list[InputRecord] = field(default_factory=list)
    tiles: list[TileSummary | None] = field(default_factory=list)
    """Per image: its tile grid and aggregates when it was tiled, None when resized."""
    timings_s: dict[str, float] = field(default_factory=dict)
    """Wall seconds by stage: decode (and prepare), queue (wait for a batch), model, tiles, explain."""
    explanations: list[Explanation] | None = None
    """Per image, its Grad-CAM map when the request asked for one (`service.explain`)."""


def decode_b64(text: object, where: str) -> bytes:
    """Base64 text of an encoded image, as every protocol carries it in JSON."""
    try:
        return base64.b64decode(text, validate=True)  # type: ignore[arg-type]
    except (binascii.Error, ValueError, TypeError) as err:
        raise InvalidBase64(f"{where}: not valid base64") from err


class Pipeline:
    """One worker's request path; safe to call from every request thread."""

    def __init__(self, settings: Settings, manager: ModelManager) -> None:
        self.settings = settings
        self.manager = manager
        self.limits = ImageLimits(
            max_pixels=settings.max_image_pixels, min_side_px=settings.min_image_side_px,
            max_decoded_bytes=settings.max_decoded_image_bytes, max_tiff_pages=settings.max_tiff_pages,
            max_jpeg_scans=settings.max_jpeg_scans,
        )
        # Decoded pixels in flight across the worker's threads: 16 threads decoding 64-megapixel
        # fields at once would otherwise outgrow the pod.
        self.decode_budget = DecodeBudget(settings.decode_budget_bytes)
        self.explainer = Explainer(settings.explain_max_concurrency, settings.explain_max_wait_s,
                                   settings.max_batch_size)

    def check_image_count(self, count: int) -> None:
        """Refuse a request with more images than the limit (413) before decoding any."""
        limit = self.settings.max_images_per_request
        if count > limit:
            raise TooManyImages(f"{count} images in one request; the limit is {limit}")

    def run(self, images: Sequence[ImageInput], route: ModelRoute, deadline: float,
            qc_mode: QcMode = "warn", tiling: TilingMode = "auto", explain: bool = False,
            background: bool = False) -> InferenceResult:
        """Classify `images` with the routed model version, by `deadline` (time.monotonic()).

        A request that picked a version just as it was being swapped out is re-routed once to
        the new version instead of failing: it was accepted, so it must not be lost. Its images
        are decoded once and only prepared again if the new version's input shape differs.
        Images that are tiled (`service.tiling`) then send their tiles, in batch-sized chunks.
        With `explain`, each image's Grad-CAM map is computed once it is labelled
        (`service.explain`; a tiled image's map is of its best tile). `background` (whole-plate
        jobs) queues the images behind every interactive one.
        """
        self.check_image_count(len(images))
        prepared: dict[tuple[int, int, int], NDArray[np.float32]] = {}
        records: list[InputRecord] = []
        large: dict[int, NDArray[np.generic]] = {}
        decode_s = 0.0
        for attempt in range(2):
            servable = self.manager.get(route.name, route.version, route.label)
            info = servable.info
            assert info is not None, "an available servable has its signature"
            shape = (info.height, info.width, info.channels)
            try:
                with servable.reserve(len(images), background) as reservation:
                    if shape not in prepared:
                        decode_started = time.monotonic()
                        with tracing.span("decode", images=len(images)):
                            prepared[shape] = self._prepare(images, info, records, deadline, large, tiling)
                        decode_s = time.monotonic() - decode_started
                    answer = servable.run(prepared[shape], reservation, deadline - time.monotonic())
            except (ShuttingDown, ModelNotReady):
                if attempt == 1 or route.pinned:
                    raise
                _log.info("model %s version %s went away mid-request; re-routing", info.name, info.version)
                continue
            timings = {"decode": decode_s, "queue": answer.queue_s, "model": answer.model_s}
            tiles = self._run_tiles(servable, info, large, tiling, answer.outputs, deadline, timings, background)
            result = self._label(answer.outputs, info, answer.batch_ids, records, qc_mode, tiles)
            if explain:
                explain_started = time.monotonic()
                explanations = self.explainer.run(servable, prepared[shape], large, tiles, deadline,
                                                  self.settings.tiling_factor, self.settings.tile_overlap)
                timings["explain"] = time.monotonic() - explain_started
                result = replace(result, explanations=explanations)
            result.timings_s.update(timings)
            return result
        raise AssertionError("unreachable")

    def _run_tiles(self, servable: Servable, info: ModelInfo, large: dict[int, NDArray[np.generic]],
                   mode: TilingMode, outputs: dict[str, NDArray[np.float32]],
                   deadline: float, timings: dict[str, float], background: bool) -> list[TileSummary | None]:
        # NOTE: the large images' resized rows were run with the batch (one row each, cheap);
        # their answer is replaced by the tiles'.
        """Tile the large images, run their tiles, and put each image's best tile in its row."""
        summaries: list[TileSummary | None] = [None] * len(outputs[info.output_key])
        for index, pixels in large.items():
            grid = tiling.plan(pixels.shape[0], pixels.shape[1], info.height, info.width, mode,
                               self.settings.tiling_factor, self.settings.tile_overlap)
            if grid is None:
                continue
            tiles_started = time.monotonic()
            # A job's tiles wait behind interactive images, a few at a time (its queue's size).
            chunk = min(servable.batch_size, self.settings.jobs_max_queued_images) if background \
                else servable.batch_size
            tile_outputs = run_tiles(servable, info, pixels, grid, deadline, chunk, background)
            timings["tiles"] = timings.get("tiles", 0.0) + time.monotonic() - tiles_started
            tile_probabilities = tile_outputs[info.output_key]
            _, calls, column = info.decide(tile_probabilities)
            summary = tiling.summarise(tile_probabilities[:, column], calls == column, grid)
            for name, array in outputs.items():  # the image is answered by its most infected tile
                array[index] = tile_outputs[name][summary.best_tile]
            summaries[index] = summary
        return summaries

    def _prepare(self, images: Sequence[ImageInput], info: ModelInfo, records: list[InputRecord],
                 deadline: float, large: dict[int, NDArray[np.generic]], mode: TilingMode) -> NDArray[np.float32]:
        """Decode and check each image and write it into its slot of one (n, H, W, C) batch;
        record what each image was (hash, decoded shape, bit depth) for provenance and the gate,
        and keep the pixels of images large enough to be tiled."""
        started = time.monotonic()
        records.clear()
        batch = np.empty((len(images), info.height, info.width, info.channels), dtype=np.float32)
        for index, image in enumerate(images):
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:  # checked between images: a slow request stops decoding
                raise BackendTimeout(f"no answer within {self.settings.request_timeout_s:g} s "
                                     f"(decoding image {index} of {len(images)})")
            if isinstance(image, EncodedImage):
                pixels = decode_image(image.data, page=image.page, limits=self.limits, budget=self.decode_budget,
                                      budget_timeout_s=min(self.settings.decode_budget_timeout_s, remaining_s))
            else:
                pixels = image
                _check_pixel_array(pixels, self.limits)
            if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
                raise NonFiniteInput(f"image {index} holds NaN or infinite pixel values")
            grid = tiling.plan(pixels.shape[0], pixels.shape[1], info.height, info.width, mode,
                               self.settings.tiling_factor, self.settings.tile_overlap)
            if grid is None:
                prepare_into(pixels, batch[index])
            else:
                # Its answer will come from its tiles: its slot takes the first tile (a crop), not
                # the whole field resized (a float32 copy of a 10,000-px montage is 400 MB).
                prepare_into(tiling.crop(pixels, grid, 0), batch[index])
                large[index] = pixels  # kept (decoded) to be tiled once the batch is answered
            encoded = image.data if isinstance(image, EncodedImage) else None
            records.append(InputRecord(encoded, tuple(pixels.shape), str(pixels.dtype), bit_depth(pixels)))
        metrics.DECODE_LATENCY.labels(info.name).observe(time.monotonic() - started)
        return batch

    def _label(self, outputs: dict[str, NDArray[np.float32]], info: ModelInfo, batch_ids: list[int],
               records: list[InputRecord], qc_mode: QcMode, tiles: list[TileSummary | None]) -> InferenceResult:
        """Label each row, apply the QC gate, and count labels and confidence per model
        version (the drift signal).

        With a `decision_threshold` in the version's metadata the positive class is called at
        or above it; otherwise the most probable class wins.
        """
        probabilities = outputs[info.output_key]
        if not np.isfinite(probabilities).all():
            # NOTE: checked before any metric: one NaN would poison the confidence sum for good.
            raise ModelCallFailed(f"model {info.name} version {info.version} returned non-finite outputs")
        names, best, column = info.decide(probabilities)
        labels: list[str | None] = [names[i] for i in best]
        verdicts = None
        if qc_mode != "off" and gated(info.metadata.qc):
            verdicts = gate(info.metadata.qc, outputs, [r.bit_depth for r in records], info.name, info.version)
            if qc_mode == "reject":
                labels = [None if v.status == "reject" else label for label, v in zip(labels, verdicts)]
        version = str(info.version)
        for label, row, index in zip(labels, probabilities, best):
            if label is None:
                continue  # refused by the gate: neither a prediction nor a confidence
            metrics.PREDICTIONS.labels(info.name, version, label).inc()
            metrics.CONFIDENCE.labels(info.name, version).observe(float(row[index]))
        metrics.IMAGES.labels(info.name, version).inc(len(labels))
        return InferenceResult(probabilities, labels, names, column, info, batch_ids, verdicts, list(records), tiles)


def _check_pixel_array(pixels: NDArray[np.generic], limits: ImageLimits) -> None:
    """The bounds decode_image enforces, for pixels that arrive already decoded."""
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (1, 3, 4)):
        raise InvalidImageShape(f"pixel array of shape {list(pixels.shape)} is not a gray or RGB image")
    height, width = pixels.shape[:2]
    limits.check(height, width, pixels.shape[2] if pixels.ndim == 3 else 1)
