"""How many batches a worker keeps in flight, chosen from the device and the measured cost curve.

On a CPU where merging images buys little (the paper CNN: 29.5 images/s at batch 1, 29.6 at
batch 8), one batch at a time leaves cores idle whenever a call does not fill them all, so
several smaller calls run side by side; where batching pays, one batch at a time already
fills the cores. On a GPU one batch runs while the next is assembled. In front of TF Serving
the work is remote, so calls are kept in flight for its own batcher to merge.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Below this throughput gain from batch 1 to max_batch_size, batching is not worth serialising for.
BATCHING_PAYS = 1.5
MAX_AUTO_THREADS = 4


@dataclass(frozen=True)
class CostCurve:
    """Warm-up timings of one model call (seconds) at batch 1 and at max_batch_size."""

    batch_size: int
    batch_1_s: float
    batch_max_s: float

    @property
    def batching_gain(self) -> float:
        """Throughput at max_batch_size over throughput at batch 1."""
        return self.batch_1_s * self.batch_size / max(self.batch_max_s, 1e-9)


def available_cores() -> int:
    """CPU cores this process may use: the cgroup quota (a pod's limit) or the affinity mask."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, round(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def choose_batch_threads(configured: int, devices: list[str], curve: CostCurve | None,
                         cores: int) -> tuple[int, str]:
    """Batches in flight per worker and why (shown in /status); `configured` > 0 wins."""
    if configured > 0:
        return configured, "configured (SERVING_BATCH_THREADS)"
    if any(device.startswith("tfserving://") for device in devices):
        return MAX_AUTO_THREADS, "the model runs in TF Serving: calls stay in flight for its batcher"
    if any("GPU" in device.upper() for device in devices):
        return 2, "GPU: one batch runs while the next is assembled"
    if curve is None:
        return 1, "no cost curve measured (warm-up off): one batch at a time"
    gain = curve.batching_gain
    if gain < BATCHING_PAYS and cores > 1:
        threads = min(cores, MAX_AUTO_THREADS)
        return threads, (f"CPU: batching gains {gain:.2f}x (batch 1 {curve.batch_1_s * 1000:.1f} ms, "
                         f"batch {curve.batch_size} {curve.batch_max_s * 1000:.1f} ms); {threads} calls "
                         f"in flight use the {cores} cores")
    return 1, f"CPU: batching gains {gain:.2f}x; one batch at a time fills the {cores} cores"
