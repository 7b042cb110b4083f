"""One-factor-at-a-time sweep of the service's tuning settings, on both models, at c=8 and c=32.

Each variant changes one setting from the defaults (fixed batching, 1 worker x 16 threads,
TF threads auto, max_batch_size 8, max_batch_delay 5 ms, padding on), plus the combination
`workers=2 + tf_intra_op_threads=1` (two processes must not each spin up one TF thread per
core). The defaults run first and last, so their spread shows the noise. Short cells, one
repeat: it shows directions, the full table is bench/run.py's job.

    python -m bench.sweep                       # ~10 min
    python -m bench.sweep --models small --duration-s 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    CellTiming,
    deploy,
    git_commit,
    log,
    machine_info,
    prepare_paper,
    measure,
    prepare_small,
    training_running,
)
from bench.servers import REPO_ROOT

VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("defaults", {}),
    ("workers=2", {"workers": 2}),
    ("workers=2, tf_intra=1", {"workers": 2, "tf_intra_op_threads": 1}),
    ("threads=8", {"threads": 8}),
    ("threads=32", {"threads": 32}),
    ("tf_intra=1", {"tf_intra_op_threads": 1}),
    ("tf_intra=2", {"tf_intra_op_threads": 2}),
    ("max_batch=4", {"max_batch_size": 4}),
    ("max_batch=16", {"max_batch_size": 16}),
    ("delay=0 ms", {"max_batch_delay_ms": 0}),
    ("delay=2 ms", {"max_batch_delay_ms": 2}),
    ("delay=10 ms", {"max_batch_delay_ms": 10}),
    ("padding off", {"pad_to_allowed_batch_sizes": "false"}),
    ("batch_threads=2", {"batch_threads": 2}),
    ("defaults (again)", {}),
]


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every `finally`: servers stop


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="paper,small")
    parser.add_argument("--concurrency", default="8,32")
    parser.add_argument("--paper-duration-s", type=float, default=5.0)
    parser.add_argument("--small-duration-s", type=float, default=3.0)
    parser.add_argument("--warmup-s", type=float, default=1.5)
    parser.add_argument("--variants", default="", help="comma list of variant names to run (default all)")
    parser.add_argument("--naive", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure the naive baseline with 1 and 2 sync workers")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "sweep")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    wanted = {v.strip() for v in args.variants.split(",") if v.strip()}
    variants = [(name, s) for name, s in VARIANTS if not wanted or name in wanted]
    tmp = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    results: dict[str, Any] = {"models": {}}
    training_at_start = training_running()
    try:
        for key in [m for m in args.models.split(",") if m]:
            if key == "paper":
                model = prepare_paper(tmp, CellTiming(args.warmup_s, args.paper_duration_s, args.paper_duration_s))
            else:
                model = prepare_small(tmp, CellTiming(args.warmup_s, args.small_duration_s, args.small_duration_s))
            rows: list[dict[str, Any]] = []
            configs: list[tuple[str, str, dict[str, Any], int]] = []
            if args.naive:
                configs += [("naive sync, workers=1", "naive", {}, 1), ("naive sync, workers=2", "naive", {}, 2)]
            configs += [(name, "fixed", settings, 2) for name, settings in variants]
            for name, row, settings, naive_workers in configs:
                entry: dict[str, Any] = {"variant": name, "settings": settings, "cells": {}}
                try:
                    with deploy(tmp, model, row, settings, naive_workers=naive_workers) as deployment:
                        for conc in concurrencies:
                            cell = measure(deployment, busy_retries=1, concurrency=conc)
                            entry["cells"][conc] = cell
                            log(f"{key} {name} c={conc}: {cell['throughput_rps']:.1f} img/s "
                                f"p50 {cell['p50_ms']:.1f} p99 {cell['p99_ms']:.1f} ms errors {cell['errors']} "
                                f"srv cpu {cell['server_cpu_cores'] or 0:.2f} other cpu {cell.get('other_cpu_cores') or 0:.2f}")
                except Exception as err:  # noqa: BLE001 - one broken variant must not end the sweep
                    entry["error"] = f"{type(err).__name__}: {str(err)[:300]}"
                    log(f"{key} {name}: FAILED {entry['error']}")
                rows.append(entry)
            results["models"][key] = {"title": model.title, "variants": rows}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["meta"] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m bench.sweep " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(),
        "git_commit": git_commit(),
        "training_at_start": training_at_start,
        "training_at_end": training_running(),
        "wall_min": (time.monotonic() - started) / 60,
        "cell": {"warmup_s": args.warmup_s, "paper_duration_s": args.paper_duration_s,
                 "small_duration_s": args.small_duration_s, "repeats": 1},
    }
    report = render(results, concurrencies)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(report)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")


def render(results: dict[str, Any], concurrencies: list[int]) -> str:
    meta = results["meta"]
    lines = [
        f"# Settings sweep — {meta['date']}", "",
        f"`{meta['command']}` at commit {meta.get('git_commit')} on {meta['machine']['cpus']} CPUs; one repeat per cell "
        f"({meta['cell']['warmup_s']:g} s warm-up + {meta['cell']['paper_duration_s']:g} s paper / "
        f"{meta['cell']['small_duration_s']:g} s small), closed loop; fixed batching unless the variant is naive. "
        f"Training running at start/end: {meta['training_at_start']}/{meta['training_at_end']}. "
        f"Wall time {meta['wall_min']:.1f} min.", "",
    ]
    header = "| model | variant | " + " | ".join(
        f"c={c} img/s | c={c} p50 | c={c} p99" for c in concurrencies) + f" | srv CPU (c={concurrencies[-1]}) | other CPU (c={concurrencies[-1]}) |"
    lines += [header, "|---|---|" + "---:|" * (3 * len(concurrencies) + 2)]
    for key, model in results["models"].items():
        for entry in model["variants"]:
            if "error" in entry:
                lines.append(f"| {key} | {entry['variant']} | failed: {entry['error'][:80]} |")
                continue
            parts = []
            for c in concurrencies:
                cell = entry["cells"].get(c) or entry["cells"].get(str(c))
                parts += [f"{cell['throughput_rps']:.1f}", f"{cell['p50_ms']:.1f}", f"{cell['p99_ms']:.1f}"]
            last = entry["cells"].get(concurrencies[-1]) or {}
            cpu = last.get("server_cpu_cores")
            cpu_text = f"{cpu:.2f}" if cpu is not None else "–"
            other = last.get("other_cpu_cores")
            other_text = f"{other:.2f}" if other is not None else "–"
            lines.append(f"| {key} | {entry['variant']} | " + " | ".join(parts) + f" | {cpu_text} | {other_text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
