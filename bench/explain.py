"""What an explanation costs per image, against a plain prediction (part of `make bench`).

    python -m bench.explain [--requests 10] [--out bench/results/explain]

One Gunicorn serves versions 1 and 2 (warmed up); one client sends the same 16-bit 1360x1024
generated influenza field(s) one request at a time to `/predict`, `/explain?overlay=false`
and `/explain`, with 1 and 8 images per request. Per image: the median end-to-end latency, and
the `model` and `explain` stages from the answers' `Server-Timing` (the batched forward pass,
and the Grad-CAM backward pass outside the batcher). Sequential on purpose: this is cost, not
throughput; under load an explanation also holds one of `SERVING_EXPLAIN_MAX_CONCURRENCY` slots.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import git_commit, log, machine_info
from bench.payloads import tiff_bytes
from bench.servers import REPO_ROOT, service_server
from training.synthetic import generate

ROUTES = (("predict", "/predict"), ("explain, array only", "/explain?overlay=false"),
          ("explain, array + PNG", "/explain"))


def _stages(header: str) -> dict[str, float]:
    """`decode;dur=7.1, model;dur=121.4` -> {"decode": 7.1, "model": 121.4} (ms)."""
    stages = {}
    for part in header.split(","):
        name, _, duration = part.strip().partition(";dur=")
        if duration:
            stages[name] = float(duration)
    return stages


def _measure(url: str, fields: list[bytes], requests_n: int) -> dict[str, float]:
    files = [("image", (f"{index}.tif", data)) for index, data in enumerate(fields)]
    latencies, model, explain = [], [], []
    for attempt in range(requests_n + 2):  # the first two warm the route's shapes
        started = time.perf_counter()
        response = requests.post(url, files=files, timeout=300)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")
        if attempt >= 2:
            stages = _stages(response.headers.get("Server-Timing", ""))
            latencies.append(elapsed * 1000 / len(fields))
            model.append(stages.get("model", 0.0) / len(fields))
            explain.append(stages.get("explain", 0.0) / len(fields))
    return {"latency_ms": statistics.median(latencies), "model_ms": statistics.median(model),
            "explain_ms": statistics.median(explain), "bytes": len(response.content) / len(fields)}


def render(results: dict[str, Any]) -> str:
    lines = ["## Explanations: cost per image", "",
             (f"{results['meta']['date']}, commit {results['meta']['git_commit']}, "
              f"{results['meta']['requests']} sequential requests per cell (medians), one worker."), "",
             ("| version | images/request | route | end to end ms/image | model ms/image | Grad-CAM ms/image "
              "| × predict | answer KB/image |"),
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for cell in results["cells"]:
        base = next(c for c in results["cells"] if c["version"] == cell["version"] and c["images"] == cell["images"]
                    and c["route"] == "predict")
        lines.append(f"| {cell['version']} | {cell['images']} | {cell['route']} | {cell['latency_ms']:.0f} "
                     f"| {cell['model_ms']:.0f} | {cell['explain_ms']:.0f} "
                     f"| {cell['latency_ms'] / base['latency_ms']:.2f} | {cell['bytes'] / 1024:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10, help="measured requests per cell")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "explain")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-explain-"))
    config = tmp / "models.config"
    config.write_text('model_config_list { config { name: "cpe_cnn" base_path: "cpe_cnn" model_platform: '
                      '"tensorflow" model_version_policy { specific { versions: 1 versions: 2 } } } }')
    fields = [tiff_bytes(generate(700 + index, "influenza", 2)[0]) for index in range(8)]
    server = service_server(tmp, "explain", {"model_repository": REPO_ROOT / "model_repository",
                                              "model_config_file": config, "repository_poll_interval_s": 0})
    cells = []
    try:
        server.start()
        server.wait_ready()
        for version in (1, 2):
            for images in (1, 8):
                for route, path in ROUTES:
                    separator = "&" if "?" in path else "?"
                    cell = _measure(f"{server.url}{path}{separator}version={version}", fields[:images], args.requests)
                    cells.append({"version": version, "images": images, "route": route, **cell})
                    log(f"v{version} {images} image(s) {route}: {cell}")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    results = {"cells": cells, "meta": {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                        "git_commit": git_commit(), "machine": machine_info(),
                                        "requests": args.requests}}
    report = render(results)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(report)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
