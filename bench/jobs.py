"""Interactive /predict latency alone and while a whole-plate job runs on the same worker.

    python -m bench.jobs [--seconds 30] [--clients 2] [--queued-images 1 4]

For each SERVING_JOBS_MAX_QUEUED_IMAGES value: a fresh Gunicorn serving the committed model,
`--clients` closed-loop clients posting 1360x1024 16-bit fields for `--seconds` (p50/p99,
images/s), then again while a 400-image job (a manifest under the input root) runs, then the
job's own rate with no interactive traffic. Results: bench/results/jobs-priority.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import log
from bench.payloads import write_payloads
from bench.servers import REPO_ROOT, service_server

RESULTS = REPO_ROOT / "bench" / "results"


def closed_loop(url: str, bodies: list[bytes], seconds: float, clients: int) -> dict[str, float]:
    """`clients` threads each sending one image at a time, back to back, for `seconds`."""
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        while time.monotonic() < stop:
            started = time.monotonic()
            answer = requests.post(f"{url}/predict", data=bodies[index % len(bodies)],
                                   headers={"Content-Type": "image/tiff"}, timeout=120)
            answer.raise_for_status()
            latencies.append(time.monotonic() - started)
            index += clients

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies.sort()
    return {"requests": len(latencies), "p50_ms": round(1000 * latencies[len(latencies) // 2]),
            "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]),
            "images_per_s": round(len(latencies) / seconds, 2)}


def _job(url: str, names: list[str], count: int) -> str:
    items = [{"path": names[i % len(names)], "plate": "bench", "well": "B02", "site": i} for i in range(count)]
    answer = requests.post(f"{url}/jobs", json={"items": items}, timeout=60)
    answer.raise_for_status()
    return str(answer.json()["id"])


def measure(tmp: Path, inputs: Path, bodies: list[bytes], queued: int, seconds: float, clients: int) -> dict[str, Any]:
    names = sorted(path.name for path in inputs.iterdir())
    server = service_server(tmp, f"jobs-q{queued}", {
        "max_batch_size": 8, "threads": 16, "repository_poll_interval_s": 0, "data_dir": tmp / f"data-{queued}",
        "jobs_input_root": inputs, "jobs_poll_interval_s": 0.2, "jobs_max_queued_images": queued})
    server.start()
    try:
        server.wait_ready()
        closed_loop(server.url, bodies, 5, clients)  # warm-up, discarded
        alone = closed_loop(server.url, bodies, seconds, clients)
        job = _job(server.url, names, 400)
        time.sleep(2)
        during = closed_loop(server.url, bodies, seconds, clients)
        progress = requests.get(f"{server.url}/jobs/{job}", timeout=30).json()["progress"]
        requests.delete(f"{server.url}/jobs/{job}", timeout=30)
        job = _job(server.url, names, 60)
        while (status := requests.get(f"{server.url}/jobs/{job}", timeout=30).json())["state"] in ("queued",
                                                                                                   "running"):
            time.sleep(0.5)
        return {"jobs_max_queued_images": queued, "interactive_alone": alone, "interactive_during_job": during,
                "job_images_per_s_during": round(progress["images_per_s"] or 0.0, 2),
                "job_images_per_s_alone": round(status["progress"]["images_per_s"] or 0.0, 2)}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--queued-images", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as directory:
        tmp = Path(directory)
        paths = write_payloads(tmp / "input", 8, 1024, 1360)
        bodies = [path.read_bytes() for path in paths]
        rows = []
        for queued in args.queued_images:
            log(f"SERVING_JOBS_MAX_QUEUED_IMAGES={queued}")
            rows.append(measure(tmp, tmp / "input", bodies, queued, args.seconds, args.clients))
            log(json.dumps(rows[-1]))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "jobs-priority.json").write_text(json.dumps({"clients": args.clients, "seconds": args.seconds,
                                                            "rows": rows}, indent=1) + "\n")
    header = ("| job images at once | interactive p50 / p99 alone (ms) | during a job (ms) "
              "| interactive img/s alone / during | job img/s during / alone |")
    lines = [header, "|---|---|---|---|---|"]
    for row in rows:
        alone, during = row["interactive_alone"], row["interactive_during_job"]
        lines.append(f"| {row['jobs_max_queued_images']} | {alone['p50_ms']} / {alone['p99_ms']} | "
                     f"{during['p50_ms']} / {during['p99_ms']} | {alone['images_per_s']} / {during['images_per_s']} "
                     f"| {row['job_images_per_s_during']} / {row['job_images_per_s_alone']} |")
    (RESULTS / "jobs-priority.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
