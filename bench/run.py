"""Side-by-side throughput/latency table of the serving stack and its peers: `make bench`.

For each model (the committed paper CNN on 1360x1024 16-bit TIFFs, and the 64x64 CNN of
bench/small_model.py on 64x64 PNGs, where per-request overhead dominates), on loopback:

  raw       the SavedModel in-process on pre-prepared batches, best batch size (the ceiling)
  naive     bench/naive_app.py: Flask under Gunicorn sync, one model call per request
  gthread   the same app under Gunicorn gthread, 8 threads, 1 worker
  ray       bench/ray_app.py: Ray Serve, @serve.batch, one replica behind Ray's HTTP proxy
  service   this service with every setting at its default
  off / fixed / adaptive / grpc   the service with SERVING_BATCHING=... or the gRPC backend (opt-in)

The peers run from the bench venv (.venv-bench: `make bench-venv`), the service from its own.
Closed-loop cells at each concurrency (bench/loadgen.py, repeated, medians), the same cells
once more by wrk (bench/wrk.py) as a cross-check, an open-loop run at half of the service's
saturation, the service's CPU per image by stage (bench/stages.py), images per request and
workers per pod (bench/capacity.py), and issue 13's targets (bench/targets.py). Writes
bench/results/latest.{md,json}.

    python -m bench.run                      # full: ~25 min on 2 cores
    python -m bench.run --quick              # smoke: 1 repeat, short cells (BENCH_QUICK=1 make bench)
    python -m bench.run --models small --rows naive,gthread,service --repeats 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import capacity, report, stages, targets
from bench.common import (
    CellTiming,
    ModelSetup,
    deploy,
    git_commit,
    log,
    machine_info,
    measure,
    median_cells,
    prepare_paper,
    prepare_small,
    run_raw,
    training_running,
    wait_for_quiet,
)
from bench.servers import REPO_ROOT, peer_versions
from bench.wrk import run_wrk_cell, wrk_path, wrk_version

ROWS = ["raw", "naive", "gthread", "ray", "service", "off", "fixed", "adaptive", "grpc"]
DEFAULT_ROWS = "raw,naive,gthread,ray,service"
OPEN_LOOP_ROWS = ["service", "fixed", "adaptive"]
BUSY_RETRIES = 2  # set from --busy-retries


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 repeat, short cells, fewer capacity rows")
    parser.add_argument("--models", default="paper,small", help="comma list of: paper, small")
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma list of: {', '.join(ROWS)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--wrk", default="naive,gthread,ray,service",
                        help="rows also measured by wrk at every concurrency (empty: none)")
    parser.add_argument("--open-loads", default="0.5",
                        help="open-loop arrival rates as fractions of the service's saturation; empty to skip")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                        help="the service's CPU per image by stage (py-spy) at c=32")
    parser.add_argument("--images-per-request", default="1,8,32", help="multipart sizes (empty: skip)")
    parser.add_argument("--workers", default="1,2,3", help="service worker counts at c=32 (empty: skip)")
    parser.add_argument("--naive-workers", default="1", help="1, 2 or auto (measure both at c=8, keep the faster)")
    parser.add_argument("--target-latency-ms", default="auto",
                        help="adaptive policy target; auto = 2x the fixed policy's p50 at c=1")
    parser.add_argument("--service-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra SERVING_* setting for every service row, e.g. workers=2 (repeatable)")
    parser.add_argument("--paper-duration-s", type=float, default=8.0)
    parser.add_argument("--small-duration-s", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--small-format", choices=["tiff", "png"], default="png")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "latest",
                        help="output path without suffix: writes OUT.md and OUT.json")
    parser.add_argument("--wait-quiet-s", type=float, default=0.0,
                        help="first wait up to this long for an idle machine (no training.train, <0.3 cores busy)")
    parser.add_argument("--busy-retries", type=int, default=2,
                        help="redo a cell up to this often when other jobs kept >0.3 cores busy during it")
    parser.add_argument("--keep-tmp", action="store_true", help="keep server logs and payloads")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
        args.paper_duration_s, args.small_duration_s, args.warmup_s = 4.0, 2.0, 1.0
        args.workers = "1,2" if args.workers == "1,2,3" else args.workers
        args.busy_retries = 0
    return args


def _service_settings(args: argparse.Namespace) -> dict[str, str]:
    settings = {}
    for item in args.service_env:
        key, _, value = item.partition("=")
        settings[key.strip().lower().removeprefix("serving_")] = value.strip()
    return settings


def _closed_loop(model: ModelSetup, row: str, deployment: Any, concurrencies: list[int],
                 repeats: int) -> dict[int, dict[str, Any]]:
    cells: dict[int, list[dict[str, Any]]] = {c: [] for c in concurrencies}
    for repeat in range(repeats):
        for concurrency in concurrencies:  # interleaved, so a drift hits every concurrency alike
            cell = measure(deployment, busy_retries=BUSY_RETRIES, concurrency=concurrency, seed=repeat)
            log(f"{model.key}/{row} c={concurrency} rep {repeat + 1}: {cell['throughput_rps']:.1f} img/s "
                f"p50 {cell['p50_ms']:.1f} p99 {cell['p99_ms']:.1f} ms errors {cell['errors']} "
                f"loadgen cpu {cell['loadgen_cpu_share']:.2f} server cpu {cell['server_cpu_cores'] or 0:.2f} "
                f"other cpu {cell.get('other_cpu_cores') or 0:.2f}")
            cells[concurrency].append(cell)
    return {c: median_cells(v) for c, v in cells.items()}


def _wrk_cells(model: ModelSetup, row: str, deployment: Any, concurrencies: list[int]) -> dict[int, dict[str, Any]]:
    assert deployment.server is not None
    out = {}
    for concurrency in concurrencies:
        cell = run_wrk_cell(deployment.server.port, model.payloads, model.content_type, deployment.watch_pids,
                            concurrency, model.timing.warmup_s, model.timing.duration_s)
        log(f"{model.key}/{row} wrk c={concurrency}: {cell['throughput_rps']:.1f} req/s p50 {cell['p50_ms']:.1f} "
            f"p99 {cell['p99_ms']:.1f} ms errors {cell['errors']} wrk cpu {cell['loadgen_cpu_share']:.2f}")
        out[concurrency] = cell
    return out


def _open_loop(model: ModelSetup, row: str, deployment: Any, rate: float, repeats: int,
               load: float) -> dict[str, Any]:
    cells = []
    for repeat in range(repeats):
        cell = measure(deployment, busy_retries=BUSY_RETRIES, mode="open", rate=rate, seed=100 + repeat)
        log(f"{model.key}/{row} open {load:.0%} ({rate:.1f}/s) rep {repeat + 1}: {cell['throughput_rps']:.1f} img/s "
            f"p50 {cell['p50_ms']:.1f} p99 {cell['p99_ms']:.1f} ms errors {cell['errors']}")
        cells.append(cell)
    result = median_cells(cells)
    result.update(rate_rps=rate, load=load)
    return result


def _choose_naive_workers(tmp: Path, model: ModelSetup, setting: str) -> tuple[int, dict[str, float]]:
    if setting != "auto":
        return int(setting), {}
    probe: dict[str, float] = {}
    for workers in (1, 2):
        with deploy(tmp, model, "naive", naive_workers=workers) as deployment:
            cell = measure(deployment, busy_retries=BUSY_RETRIES, concurrency=8, warmup_s=1.0,
                           duration_s=max(3.0, model.timing.duration_s / 2))
        probe[str(workers)] = cell["throughput_rps"]
        log(f"{model.key}/naive probe workers={workers}: {cell['throughput_rps']:.1f} img/s at c=8")
    return (1 if probe["1"] > probe["2"] else 2), probe


def _service_extras(tmp: Path, model: ModelSetup, deployment: Any, out: dict[str, Any],
                    args: argparse.Namespace) -> None:
    """What only the service's default row gets: the stage profile and multi-image requests."""
    if args.profile:
        duration = max(3, round(model.timing.duration_s))
        out["stages"] = stages.profile_stages(deployment, tmp, 32, duration, warmup_s=model.timing.warmup_s)
        log(f"{model.key}/service stages: {out['stages']['total_cpu_ms_per_image']:.2f} ms CPU/image "
            + json.dumps({k: round(v, 3) for k, v in out["stages"]["cpu_ms_per_image"].items()}))
    counts = [int(n) for n in args.images_per_request.split(",") if n.strip()]
    if counts:
        out["images_per_request"] = capacity.images_per_request(deployment, tmp, counts, BUSY_RETRIES)


def bench_model(tmp: Path, model: ModelSetup, args: argparse.Namespace) -> dict[str, Any]:
    rows = [r for r in args.rows.split(",") if r]
    extra_settings = _service_settings(args)
    out: dict[str, Any] = {"title": model.title, "info": model.info, "rows": {}, "wrk": {}, "open_loop": {},
                           "servers": {}, "settings_override": extra_settings}
    if "raw" in rows:
        log(f"{model.key}: raw ceiling")
        sizes, seconds = ("1,2,4,8,16,32", 2.0) if not args.quick else ("1,8,32", 1.0)
        raw = run_raw(model, sizes, duration_s=seconds, repeats=args.repeats)
        for _ in range(BUSY_RETRIES):
            if (raw.get("other_cpu_cores") or 0.0) <= 0.3:
                break
            log(f"{model.key}: other jobs used {raw['other_cpu_cores']:.2f} cores during the raw ceiling; redoing it")
            again = run_raw(model, sizes, duration_s=seconds, repeats=args.repeats)
            if again.get("other_cpu_cores", 9) < raw.get("other_cpu_cores", 9):
                raw = again
        out["raw"] = raw
        log(f"{model.key}: raw ceiling {raw['best_images_per_s']:.1f} img/s at batch {raw['best_batch_size']}")
    if "naive" in rows:
        out["naive_workers"], out["naive_probe_c8"] = _choose_naive_workers(tmp, model, args.naive_workers)
    for row in (r for r in ROWS if r in rows and r != "raw"):
        settings = dict(extra_settings) if row not in ("naive", "gthread", "ray") else {}
        if row == "adaptive":
            target = args.target_latency_ms
            if target == "auto":
                fixed_c1 = report.cell(out, "fixed", 1)
                target = f"{2 * fixed_c1['p50_ms']:.0f}" if fixed_c1 else "250"
            settings["target_latency_ms"] = target
            out["adaptive_target_latency_ms"] = float(target)
        log(f"{model.key}: starting {row} {settings or ''}")
        _guarded(out, row, _bench_row, tmp, model, row, settings, out, args)
    workers = [int(n) for n in args.workers.split(",") if n.strip()]
    if workers and "service" in rows:
        first = report.cell(out, "service", 32)
        if first is not None:
            first = {**first, "memory": out["servers"]["service"]["memory"]}
        out["workers"] = capacity.worker_sweep(tmp, model, workers, extra_settings, first, BUSY_RETRIES)
    return out


def _guarded(out: dict[str, Any], name: str, step: Callable[..., None], *args: Any) -> None:
    """Run one row: a server that cannot start or dies for good costs that row, not the run."""
    try:
        step(*args)
    except Exception as err:  # noqa: BLE001 - recorded in the report's notes
        out.setdefault("failures", {})[name] = f"{type(err).__name__}: {str(err)[:300]}"
        log(f"{out['title']}: {name} FAILED: {out['failures'][name]}")


def _bench_row(tmp: Path, model: ModelSetup, row: str, settings: dict[str, Any], out: dict[str, Any],
               args: argparse.Namespace) -> None:
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    loads = [float(x) for x in args.open_loads.split(",") if x.strip()]
    with deploy(tmp, model, row, settings, naive_workers=out.get("naive_workers", 1)) as deployment:
        log(f"{model.key}/{row}: ready after {deployment.ready_s:.1f} s")
        out["rows"][row] = _closed_loop(model, row, deployment, concurrencies, args.repeats)
        if row in args.wrk.split(",") and wrk_path():
            out["wrk"][row] = _wrk_cells(model, row, deployment, concurrencies)
        out["servers"][row] = {"ready_s": deployment.ready_s, "memory": deployment.memory(),
                               "restarts": deployment.restarts}
        if row in OPEN_LOOP_ROWS and loads:
            saturation = out.get("saturation_rps") or max(c["throughput_rps"] for c in out["rows"][row].values())
            out.setdefault("saturation_rps", saturation)
            for load in loads:
                out["open_loop"].setdefault(f"{load:g}", {})[row] = _open_loop(
                    model, row, deployment, load * saturation, args.repeats, load)
        if row == "service":
            _service_extras(tmp, model, deployment, out, args)


def _notes(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    notes = []
    if not wrk_path():
        notes.append("wrk is not installed (Debian: `apt-get install wrk`): no wrk cross-check in this run.")
    for key, model in results["models"].items():
        busy = [f"{row} c={conc}" for row, cells in model["rows"].items() for conc, cell in cells.items()
                if (cell.get("other_cpu_cores") or 0) > 0.3]
        if busy:
            notes.append(f"{key}: other jobs on the machine kept > 0.3 cores busy (median over repeats, after up "
                         f"to {args.busy_retries} redos) during: {', '.join(busy)}; those cells understate the server.")
        restarts = {row: s["restarts"] for row, s in model.get("servers", {}).items() if s["restarts"]}
        if restarts:
            notes.append(f"{key}: servers that died under load and were restarted: {restarts}.")
        for name, failure in model.get("failures", {}).items():
            notes.append(f"{key}: {name} failed and is missing from the tables: {failure}")
        if model.get("naive_probe_c8"):
            probe = ", ".join(f"{w} worker(s): {v:.1f} img/s" for w, v in model["naive_probe_c8"].items())
            notes.append(f"{key}: naive sync workers chosen by a c=8 probe ({probe}) -> {model['naive_workers']}.")
    return notes


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every `finally`: servers stop


def main(argv: list[str] | None = None) -> None:
    global BUSY_RETRIES
    args = parse_args(argv)
    BUSY_RETRIES = args.busy_retries
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    quiet = wait_for_quiet(args.wait_quiet_s) if args.wait_quiet_s > 0 else None
    if quiet:
        log(f"quiet check: {quiet}")
    training_at_start = training_running()
    if training_at_start:
        log("WARNING: training.train is running: the CPUs are shared, numbers will be low")
    paper_timing = CellTiming(args.warmup_s, args.paper_duration_s, args.paper_duration_s * 1.5)
    small_timing = CellTiming(args.warmup_s, args.small_duration_s, args.small_duration_s * 1.5)
    results: dict[str, Any] = {"models": {}}
    try:
        for key in (m for m in args.models.split(",") if m):
            if key == "paper":
                model = prepare_paper(tmp, paper_timing)
            elif key == "small":
                model = prepare_small(tmp, small_timing, fmt=args.small_format)
            else:
                raise SystemExit(f"unknown model {key!r}")
            log(f"model {key}: {model.title}, {model.info}")
            results["models"][key] = bench_model(tmp, model, args)
    finally:
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"logs and payloads kept in {tmp}")
    results["meta"] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(), "git_commit": git_commit(), "peer_versions": peer_versions(),
        "wrk": wrk_version(), "repeats": args.repeats, "warmup_s": args.warmup_s,
        "paper_duration_s": args.paper_duration_s, "small_duration_s": args.small_duration_s,
        "concurrency": args.concurrency, "open_loads": args.open_loads, "payload_images": 4,
        "service_overrides": _service_settings(args), "quiet_check": quiet,
        "training_at_start": training_at_start, "training_at_end": training_running(),
        "wall_min": (time.monotonic() - started) / 60,
    }
    results["notes"] = _notes(results, args)
    results["targets"] = targets.evaluate(results)
    text = report.render(results, results["targets"])
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    log(f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.json')} "
        f"in {(time.monotonic() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
