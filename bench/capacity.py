"""Capacity rows of `make bench`: images per request (1, 8, 32) and worker processes per pod.

Multi-image requests are multipart bodies of N `image` parts (what the lab client sends), at
max(2, 32 // N) concurrent clients so about 32 images are in flight whatever N is. A request
larger than the service's max_body_bytes (64 MiB: 24 paper TIFFs) is cut to the most images
that fit, and the row says so. The worker sweep reruns the service with SERVING_WORKERS=2, 3
at c=32 and reads every process's resident memory (VmRSS now, VmHWM peak) after the cell: the
deploy/k8s pod has 3 GiB (3 workers are skipped when 2 already exceed it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import Deployment, ModelSetup, deploy, log, measure

BOUNDARY = "bench-multipart-boundary-7d3f"
MAX_BODY_BYTES = 64 * 1024 * 1024  # service/config.py max_body_bytes default
POD_MEMORY_MIB = 3 * 1024


def multipart_body(payloads: list[Path], count: int, content_type: str) -> bytes:
    """`count` images (payloads round-robin) as multipart/form-data `image` parts."""
    parts = []
    for index in range(count):
        path = payloads[index % len(payloads)]
        parts.append(
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{index}-{path.name}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def images_per_request(deployment: Deployment, tmp: Path, counts: list[int],
                       busy_retries: int = 2) -> dict[str, Any]:
    """images/s and request p50/p99 for each number of images per request."""
    model = deployment.model
    per_image = max(p.stat().st_size for p in model.payloads) + 200
    rows: dict[str, Any] = {}
    for wanted in counts:
        count = min(wanted, (MAX_BODY_BYTES - 100) // per_image)
        concurrency = max(2, 32 // count)
        body = tmp / f"multi-{model.key}-{count}.bin"
        body.write_bytes(multipart_body(model.payloads, count, model.content_type))
        # A request of N images takes ~N model calls: the window is longer so that enough of them end in it.
        cell = measure(deployment, busy_retries=busy_retries, concurrency=concurrency, payloads=[body],
                       duration_s=model.timing.duration_s * 1.5,
                       content_type=f"multipart/form-data; boundary={BOUNDARY}")
        cell.update(images_per_request=count, wanted=wanted, concurrency=concurrency,
                    images_per_s=cell["throughput_rps"] * count)
        rows[str(wanted)] = cell
        log(f"{model.key}/service {count} images/request c={concurrency}: {cell['images_per_s']:.1f} img/s "
            f"p99 {cell['p99_ms']:.0f} ms errors {cell['errors']}")
    return rows


def worker_sweep(tmp: Path, model: ModelSetup, workers: list[int], settings: dict[str, Any],
                 first: dict[str, Any] | None, busy_retries: int = 2) -> dict[str, Any]:
    """c=32 throughput and memory per worker count; `first` is the 1-worker service row's cell."""
    rows: dict[str, Any] = {}
    for count in workers:
        if count == 1 and first is not None:
            rows["1"] = first
            continue
        previous = rows.get(str(count - 1), {}).get("memory", {})
        if count >= 3 and previous.get("total_hwm_mib", 0) > POD_MEMORY_MIB:
            rows[str(count)] = {"error": f"skipped: {count - 1} workers already exceed the pod's 3 GiB"}
            log(f"{model.key}/service workers={count}: {rows[str(count)]['error']}")
            continue  # each worker holds its own model and batches: more cannot fit, and risk the host's memory
        try:
            with deploy(tmp, model, "service", {**settings, "workers": count}) as deployment:
                cell = measure(deployment, busy_retries=busy_retries, concurrency=32)
                cell["memory"] = deployment.memory()
                cell["ready_s"] = deployment.ready_s
        except Exception as err:  # noqa: BLE001 - one count that cannot start must not end the run
            rows[str(count)] = {"error": f"failed: {type(err).__name__}: {str(err)[:300]}"}
            log(f"{model.key}/service workers={count}: FAILED {rows[str(count)]['error']}")
            continue
        cell["fits_pod"] = cell["memory"]["total_rss_mib"] <= POD_MEMORY_MIB
        rows[str(count)] = cell
        log(f"{model.key}/service workers={count} c=32: {cell['throughput_rps']:.1f} img/s p99 "
            f"{cell['p99_ms']:.0f} ms, RSS {cell['memory']['total_rss_mib']:.0f} MiB in all")
    return rows
