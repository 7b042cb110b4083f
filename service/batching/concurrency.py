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
    """Warm-up timings of one model call (seconds) at batch 1 and at max_batch_size, and the
    memory one call of max_batch_size needs beyond the loaded model (bytes)."""

    batch_size: int
    batch_1_s: float
    batch_max_s: float
    batch_bytes: int = 0

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


def memory_limit_bytes() -> int | None:
    """The cgroup memory limit (a pod's), or the machine's memory."""
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if text != "max":
            return int(text)
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def process_memory_bytes(field: str = "VmHWM") -> int:
    """This process's resident memory (`VmRSS`) or its peak (`VmHWM`), from /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def choose_batch_threads(configured: int, devices: list[str], curve: CostCurve | None,
                         cores: int, memory_headroom_bytes: int | None = None) -> tuple[int, str]:
    """Batches in flight per worker and why (shown in /status); `configured` > 0 wins.

    Each extra call in flight needs its own activations (the paper CNN's first convolution
    alone is ~110 MB per 1360x1024 image): on a CPU, calls beyond the first are only added
    while `memory_headroom_bytes` (what the pod may still use) holds their `batch_bytes`.
    """
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
        memory_note = ""
        if memory_headroom_bytes is not None and curve.batch_bytes > 0:
            fits = 1 + max(0, memory_headroom_bytes) // curve.batch_bytes
            if fits < threads:
                threads = int(fits)
                memory_note = (f"; memory holds {threads} (a batch needs {curve.batch_bytes / 2**20:.0f} MiB, "
                               f"{max(0, memory_headroom_bytes) / 2**20:.0f} MiB free of the limit)")
        return threads, (f"CPU: batching gains {gain:.2f}x (batch 1 {curve.batch_1_s * 1000:.1f} ms, "
                         f"batch {curve.batch_size} {curve.batch_max_s * 1000:.1f} ms); {threads} calls "
                         f"in flight for the {cores} cores{memory_note}")
    return 1, f"CPU: batching gains {gain:.2f}x; one batch at a time fills the {cores} cores"
