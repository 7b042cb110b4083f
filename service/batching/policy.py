"""When a batch is due: the off/fixed/adaptive policies and the measurements they use.

The batcher thread asks `BatchingPolicy.wait_budget_s` how much longer the oldest queued image
may wait for company; the answer depends only on the queue's state and what was measured
(batch cost, arrival rate), so it is tested here without threads.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

PolicyName = Literal["off", "fixed", "adaptive"]


class CostModel:
    """Least-squares fit of batch run time = a * size + b over recent batches (as BentoML)."""

    def __init__(self, window: int = 64) -> None:
        self._samples: deque[tuple[int, float]] = deque(maxlen=window)

    def observe(self, size: int, run_s: float) -> None:
        self._samples.append((size, run_s))

    def fit(self) -> tuple[float, float]:
        """(seconds per image, fixed seconds per call); (0, 0) until something was measured."""
        if not self._samples:
            return 0.0, 0.0
        sizes = np.array([s for s, _ in self._samples], dtype=np.float64)
        times = np.array([t for _, t in self._samples], dtype=np.float64)
        if np.ptp(sizes) == 0:
            return float(times.mean() / sizes[0]), 0.0
        slope, intercept = np.polyfit(sizes, times, 1)
        return max(float(slope), 0.0), max(float(intercept), 0.0)

    def estimate_s(self, size: int) -> float:
        """Predicted run time of a batch of `size`."""
        per_image_s, fixed_s = self.fit()
        return per_image_s * size + fixed_s


class ArrivalRate:
    """Exponentially weighted images-per-second arriving at the queue."""

    def __init__(self, smoothing: float = 0.2) -> None:
        self._smoothing = smoothing
        self._last_at: float | None = None
        self._gap_s: float | None = None

    def observe(self, now: float, images: int) -> None:
        if self._last_at is not None:
            gap = max(now - self._last_at, 1e-6) / max(images, 1)
            self._gap_s = gap if self._gap_s is None else (
                self._smoothing * gap + (1 - self._smoothing) * self._gap_s
            )
        self._last_at = now

    def time_to_next_s(self, now: float) -> float:
        """Expected wait for the next image; infinite when unknown or arrivals have stalled."""
        if self._gap_s is None or self._last_at is None:
            return math.inf
        since_last = now - self._last_at
        if since_last > 2 * self._gap_s:
            return math.inf
        return max(self._gap_s - since_last, 0.0)


def allowed_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two up to and including max_batch_size (TF Serving's allowed_batch_sizes)."""
    sizes = [1 << bit for bit in range(max_batch_size.bit_length()) if (1 << bit) < max_batch_size]
    return sizes + [max_batch_size]


@dataclass
class BatchingPolicy:
    """How long a batch may wait for more images before it is run."""

    name: PolicyName = "fixed"
    max_batch_size: int = 8
    max_batch_delay_s: float = 0.005
    target_latency_s: float = 0.25
    cost: CostModel = field(default_factory=CostModel)
    arrivals: ArrivalRate = field(default_factory=ArrivalRate)

    def wait_budget_s(self, now: float, queued_images: int, oldest_enqueued_at: float, arriving_images: int) -> float:
        """How much longer the oldest queued image may wait for others (<= 0: go now).

        `arriving_images` counts images being decoded for this batcher right now (reserved,
        not yet submitted).
        """
        if queued_images >= self.max_batch_size or self.name == "off":
            return 0.0
        age_s = now - oldest_enqueued_at
        if self.name == "fixed":
            # Nothing is being decoded for us: waiting could only add latency.
            return self.max_batch_delay_s - age_s if arriving_images else 0.0
        # Adaptive: wait for the next image only if it is expected soon enough to be worth it
        # (sooner than the fixed cost of a model call it saves) and before the latency target
        # would be missed by the bigger batch it makes.
        per_image_s, fixed_cost_s = self.cost.fit()
        budget = self.target_latency_s - age_s - (per_image_s * (queued_images + 1) + fixed_cost_s)
        measured = per_image_s > 0 or fixed_cost_s > 0
        worth_s = fixed_cost_s if measured else self.max_batch_delay_s
        time_to_next = self.arrivals.time_to_next_s(now)
        if time_to_next > min(budget, worth_s):
            return 0.0
        return max(time_to_next, 1e-4)

    def retry_after_s(self, queued_images: int) -> int:
        """Seconds until a full queue has likely drained, for `Retry-After` (at least 1)."""
        per_image_s = self.cost.estimate_s(self.max_batch_size) / self.max_batch_size
        return max(1, math.ceil(queued_images * per_image_s))
