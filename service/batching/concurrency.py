"""How large a worker's batches are and how many are in flight, chosen from the device and the
cost curve measured at warm-up.

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

#: Below this throughput gain from batch 1 to the batch size in use, batching is not worth
#: serialising for: several calls go in flight instead.
BATCHING_PAYS = 1.5
MAX_AUTO_THREADS = 4
#: The automatic batch size is the smallest whose cost per image is within this of the best.
BATCH_SIZE_TOLERANCE = 0.10


@dataclass(frozen=True)
class CostCurve:
    """Warm-up timings of one model call (best seconds) by batch size, and the memory the
    largest timed call needed beyond the loaded model (bytes)."""

    seconds: dict[int, float]
    batch_bytes: int = 0
    #: Why the warm-up stopped doubling before the configured maximum, if it did (for /status).
    stopped_because: str = ""

    @property
    def largest(self) -> int:
        return max(self.seconds)

    def per_image_s(self, size: int) -> float:
        return self.seconds[size] / size

    def batching_gain(self, size: int | None = None) -> float:
        """Throughput at `size` (default: the largest timed) over throughput at batch 1."""
        size = self.largest if size is None else size
        return self.seconds[1] * size / max(self.seconds[size], 1e-9)

    def bytes_at(self, size: int) -> int:
        """Activation memory of a call of `size`, scaled from the largest timed call."""
        return self.batch_bytes * size // self.largest


def next_batch_fits(grown_bytes: int, budget_bytes: int) -> bool:
    """Whether a call twice the size of the largest so far is predicted to fit `budget_bytes` of
    activations, from `grown_bytes`, what the process's peak grew by while the calls so far ran
    (activations scale with the batch). A budget of 0 bounds nothing."""
    return budget_bytes <= 0 or grown_bytes * 2 <= budget_bytes


def runs_remotely(devices: list[str]) -> bool:
    """The model runs in TF Serving (its own batcher merges what is kept in flight)."""
    return any(device.startswith("tfserving://") for device in devices)


def has_gpu(devices: list[str]) -> bool:
    return any("GPU" in device.upper() for device in devices)


def choose_batch_size(configured_max: int, auto: bool, devices: list[str],
                      curve: CostCurve | None) -> tuple[int, str]:
    """The most images one call takes, and why (shown in /status).

    On a CPU a convolution's cost per image is often flat in the batch size (the paper CNN:
    29.5 images/s at batch 1, 29.6 at 8) while its activation memory grows with it (~110 MB
    per 1360x1024 image for the first layer alone): the smallest batch within
    BATCH_SIZE_TOLERANCE of the best cost per image serves as fast for a fraction of the
    memory and latency. GPUs and TF Serving keep the configured maximum.
    """
    if not auto:
        return configured_max, "configured (SERVING_AUTO_BATCH_SIZE=false)"
    if runs_remotely(devices) or has_gpu(devices):
        return configured_max, "configured maximum (GPU or TF Serving: larger batches pay)"
    if curve is None or 1 not in curve.seconds:
        return configured_max, "configured maximum (no cost curve measured)"
    best = min(curve.per_image_s(size) for size in curve.seconds)
    size = min(size for size in curve.seconds if curve.per_image_s(size) <= best * (1 + BATCH_SIZE_TOLERANCE))
    timings = ", ".join(f"{s}: {curve.per_image_s(s) * 1000:.1f}" for s in sorted(curve.seconds))
    stopped = f"; {curve.stopped_because}" if curve.stopped_because else ""
    return size, (f"CPU: smallest batch within {BATCH_SIZE_TOLERANCE:.0%} of the best cost per image "
                  f"(ms per image by batch size: {timings}; at most {configured_max}{stopped})")


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


def reset_peak_memory() -> bool:
    """Reset this process's peak (`VmHWM`) to its current RSS (Linux >= 4.0), so that the growth
    of the peak measures what follows, not what the process did before (loading the model, or
    earlier work in the same process); False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


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
                         cores: int, memory_headroom_bytes: int | None = None,
                         batch_size: int | None = None) -> tuple[int, str]:
    """Batches in flight per worker and why (shown in /status); `configured` > 0 wins.

    Each extra call in flight needs its own activations (the paper CNN's first convolution
    alone is ~110 MB per 1360x1024 image): on a CPU, calls beyond the first are only added
    while `memory_headroom_bytes` (what the pod may still use) holds a call of `batch_size`
    (default: the largest timed).
    """
    if configured > 0:
        return configured, "configured (SERVING_BATCH_THREADS)"
    if runs_remotely(devices):
        return MAX_AUTO_THREADS, "the model runs in TF Serving: calls stay in flight for its batcher"
    if has_gpu(devices):
        return 2, "GPU: one batch runs while the next is assembled"
    if curve is None:
        return 1, "no cost curve measured (warm-up off): one batch at a time"
    size = curve.largest if batch_size is None else batch_size
    gain = curve.batching_gain(size)
    if gain < BATCHING_PAYS and cores > 1:
        threads = min(cores, MAX_AUTO_THREADS)
        memory_note = ""
        call_bytes = curve.bytes_at(size)
        if memory_headroom_bytes is not None and call_bytes > 0:
            fits = 1 + max(0, memory_headroom_bytes) // call_bytes
            if fits < threads:
                threads = int(fits)
                memory_note = (f"; memory holds {threads} (a batch needs {call_bytes / 2**20:.0f} MiB, "
                               f"{max(0, memory_headroom_bytes) / 2**20:.0f} MiB free of the limit)")
        return threads, (f"CPU: batching gains {gain:.2f}x (batch 1 {curve.seconds[1] * 1000:.1f} ms, "
                         f"batch {size} {curve.seconds[size] * 1000:.1f} ms); {threads} calls "
                         f"in flight for the {cores} cores{memory_note}")
    return 1, f"CPU: batching gains {gain:.2f}x; one batch at a time fills the {cores} cores"
