"""Side-by-side throughput/latency table of the serving stack: `make bench` = `python -m bench.run`.

For each model (the committed paper CNN on 1360x1024 16-bit TIFFs, and a 64x64 CNN built here,
where per-request overhead dominates) it measures, with a separate asyncio load-generator
process on loopback:

  raw       the SavedModel in-process on pre-prepared batches, best batch size (the ceiling)
  naive     bench/naive_app.py: Flask under Gunicorn sync workers, one model call per request
  off       this service, SERVING_BATCHING=off
  fixed     this service, SERVING_BATCHING=fixed (the default)
  adaptive  this service, SERVING_BATCHING=adaptive (SERVING_TARGET_LATENCY_MS, see --target-latency-ms)
  grpc      this service, SERVING_BACKEND=tfserving_grpc in front of tests/tfserving_standin.py, fixed

Closed-loop cells at several concurrencies, repeated (medians reported); then open-loop
(Poisson) runs at a fraction of the fixed policy's saturation throughput for `fixed` and
`adaptive` at the same arrival rate. Prints one Markdown report and writes it with a JSON twin.

    python -m bench.run                      # full: ~25 min on 2 cores
    python -m bench.run --quick              # smoke: 1 repeat, short cells
    python -m bench.run --models small --rows naive,fixed --repeats 1
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
from bench.servers import REPO_ROOT

ROWS = ["raw", "naive", "off", "fixed", "adaptive", "grpc"]
SERVICE_ROWS = ["off", "fixed", "adaptive", "grpc"]
ROW_TITLES = {
    "raw": "raw ceiling (in-process, best batch)",
    "naive": "naive Flask + gunicorn sync",
    "off": "service, batching off",
    "fixed": "service, fixed batching",
    "adaptive": "service, adaptive batching",
    "grpc": "service -> gRPC TF Serving stand-in, fixed",
}
BUSY_RETRIES = 2  # set from --busy-retries
GOAL_RAW_FRACTION = 0.90
GOAL_NAIVE_SPEEDUP = 4.0
GOAL_P99_FACTOR = 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 repeat, short cells, concurrencies 1,32")
    parser.add_argument("--models", default="paper,small", help="comma list of: paper, small")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma list of: {', '.join(ROWS)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--open-loads", default="0.5,0.8",
                        help="open-loop arrival rates as fractions of fixed-policy saturation "
                             "(the first is the 'half of saturation' goal); empty to skip")
    parser.add_argument("--naive-workers", default="auto", help="1, 2 or auto (measure both at c=8, keep the faster)")
    parser.add_argument("--target-latency-ms", default="auto",
                        help="adaptive policy target; auto = goal p99 (2x fixed-policy p50 at c=1)")
    parser.add_argument("--service-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra SERVING_* setting for every service row, e.g. workers=2 (repeatable)")
    parser.add_argument("--paper-duration-s", type=float, default=8.0)
    parser.add_argument("--small-duration-s", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--small-format", choices=["tiff", "png"], default="tiff")
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
        args.concurrency = "1,32" if args.concurrency == "1,8,32" else args.concurrency
        args.paper_duration_s, args.small_duration_s, args.warmup_s = 3.0, 2.0, 1.0
        args.open_loads = "0.5" if args.open_loads == "0.5,0.8" else args.open_loads
        if args.naive_workers == "auto":
            args.naive_workers = "2"
    return args


def _service_settings(args: argparse.Namespace) -> dict[str, str]:
    settings = {}
    for item in args.service_env:
        key, _, value = item.partition("=")
        settings[key.strip().lower().removeprefix("serving_")] = value.strip()
    return settings


def _closed_loop(tmp: Path, model: ModelSetup, row: str, deployment: Any, concurrencies: list[int],
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


def bench_model(tmp: Path, model: ModelSetup, args: argparse.Namespace) -> dict[str, Any]:
    rows = [r for r in args.rows.split(",") if r]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    loads = [float(x) for x in args.open_loads.split(",") if x.strip()]
    extra_settings = _service_settings(args)
    out: dict[str, Any] = {"title": model.title, "info": model.info, "rows": {}, "open_loop": {},
                           "settings_override": extra_settings}
    if "raw" in rows:
        log(f"{model.key}: raw ceiling")
        raw = run_raw(model, "1,2,4,8,16,32" if not args.quick else "1,8,32",
                      duration_s=2.0 if not args.quick else 1.0, repeats=args.repeats)
        for _ in range(BUSY_RETRIES):
            if (raw.get("other_cpu_cores") or 0.0) <= 0.3:
                break
            log(f"{model.key}: other jobs used {raw['other_cpu_cores']:.2f} cores during the raw ceiling; redoing it")
            again = run_raw(model, "1,2,4,8,16,32" if not args.quick else "1,8,32",
                            duration_s=2.0 if not args.quick else 1.0, repeats=args.repeats)
            if again.get("other_cpu_cores", 9) < raw.get("other_cpu_cores", 9):
                raw = again
        out["raw"] = raw
        log(f"{model.key}: raw ceiling {raw['best_images_per_s']:.1f} img/s at batch {raw['best_batch_size']}")
    if "naive" in rows:
        workers, probe = _choose_naive_workers(tmp, model, args.naive_workers)
        out["naive_workers"] = workers
        out["naive_probe_c8"] = probe
        with deploy(tmp, model, "naive", naive_workers=workers) as deployment:
            out["rows"]["naive"] = _closed_loop(tmp, model, "naive", deployment, concurrencies, args.repeats)
    for row in (r for r in SERVICE_ROWS if r in rows):
        settings = dict(extra_settings)
        if row == "adaptive":
            target = args.target_latency_ms
            if target == "auto":
                fixed_c1 = out["rows"].get("fixed", {}).get(1)
                target = f"{GOAL_P99_FACTOR * fixed_c1['p50_ms']:.0f}" if fixed_c1 else "250"
            settings["target_latency_ms"] = target
            out["adaptive_target_latency_ms"] = float(target)
        log(f"{model.key}: starting {row} {settings or ''}")
        with deploy(tmp, model, row, settings) as deployment:
            out["rows"][row] = _closed_loop(tmp, model, row, deployment, concurrencies, args.repeats)
            out.setdefault("server_restarts", {})[row] = deployment.restarts
            if row in ("fixed", "adaptive") and loads:
                if row == "fixed":
                    saturation = max(cell["throughput_rps"] for cell in out["rows"]["fixed"].values())
                    out["fixed_saturation_rps"] = saturation
                saturation = out.get("fixed_saturation_rps")
                if saturation:
                    for load in loads:
                        out["open_loop"].setdefault(f"{load:g}", {})[row] = _open_loop(
                            model, row, deployment, load * saturation, args.repeats, load)
    return out


# --- report ------------------------------------------------------------------------------------

def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{value:,.{digits}f}"


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"# Serving benchmark — {meta['date']}",
        "",
        f"Machine: {meta['machine']['cpus']} CPUs ({meta['machine']['cpu_model']}), no GPU; Python "
        f"{meta['machine']['python']}, TensorFlow {meta['machine']['versions'].get('tensorflow')}, "
        f"gunicorn {meta['machine']['versions'].get('gunicorn')}, Flask {meta['machine']['versions'].get('flask')}.",
        f"Service code: commit {meta.get('git_commit', '?')}. Command: `{meta['command']}` — {meta['repeats']} repeat(s) per cell, medians reported; closed-loop cells "
        f"{meta['warmup_s']:g} s warm-up (discarded) + {meta['paper_duration_s']:g} s (paper) / "
        f"{meta['small_duration_s']:g} s (small) measured; wall time {meta['wall_min']:.1f} min.",
        f"Load generator: bench/loadgen.py, its own process, asyncio HTTP/1.1, one keep-alive connection per "
        f"virtual client (the naive sync workers close every connection, so its clients reconnect), one image per "
        f"request, {meta['payload_images']} distinct images round-robin. "
        f"`LG CPU` = load generator CPU s / wall s; `srv CPU` = cores used by the server process tree "
        f"(incl. the TF Serving stand-in for the gRPC row); `other CPU` = cores busy with anything else on the "
        f"machine during the cell (from /proc/stat; should be ~0 on a quiet box).",
        f"Service settings: defaults (1 worker x 16 threads, max_batch_size 8, max_batch_delay 5 ms, padding on, "
        f"TF threads auto) unless noted{': overrides ' + json.dumps(meta['service_overrides']) if meta['service_overrides'] else ''}.",
        f"Training process running: at start {meta['training_at_start']}, at end {meta['training_at_end']}.",
        "",
        "## Closed loop (each client sends its next request when it has its answer)",
        "",
        "| model | configuration | conc. | images/s | p50 ms | p95 ms | p99 ms | x raw ceiling | x naive | errors | LG CPU | srv CPU | other CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model_key, model in results["models"].items():
        name = model_key
        raw = model.get("raw")
        if raw:
            lines.append(f"| {name} | {ROW_TITLES['raw']} (batch {raw['best_batch_size']}) | – | "
                         f"{_f(raw['best_images_per_s'])} | – | – | – | 1.00 | – | – | – | {_f(raw.get('cpu_cores'), 2)} | "
                         f"{_f(raw.get('other_cpu_cores'), 2)} |")
        naive = model["rows"].get("naive", {})
        for row in ["naive", *SERVICE_ROWS]:
            cells = model["rows"].get(row)
            if not cells:
                continue
            title = ROW_TITLES[row]
            if row == "naive":
                title += f" ({model.get('naive_workers')} workers)"
            if row == "adaptive":
                title += f" (target {model.get('adaptive_target_latency_ms'):g} ms)"
            for conc, cell in sorted(cells.items(), key=lambda kv: int(kv[0])):
                vs_raw = cell["throughput_rps"] / raw["best_images_per_s"] if raw else None
                base = naive.get(conc)
                vs_naive = cell["throughput_rps"] / base["throughput_rps"] if base and row != "naive" else None
                lines.append(
                    f"| {name} | {title} | {conc} | {_f(cell['throughput_rps'])} | {_f(cell['p50_ms'])} | "
                    f"{_f(cell['p95_ms'])} | {_f(cell['p99_ms'])} | {_f(vs_raw, 2)} | {_f(vs_naive, 2)} | "
                    f"{cell['errors']} | {_f(cell['loadgen_cpu_share'], 2)} | {_f(cell['server_cpu_cores'], 2)} | "
                    f"{_f(cell.get('other_cpu_cores'), 2)} |"
                )
    lines += ["", "Raw ceiling by batch size (images/s):", ""]
    for model_key, model in results["models"].items():
        raw = model.get("raw")
        if raw:
            parts = ", ".join(f"{bs}: {_f(v['images_per_s'])}" for bs, v in raw["by_batch_size"].items())
            lines.append(f"- {model_key}: {parts}")
    open_rows = []
    compare_rows = []
    for model_key, model in results["models"].items():
        loads = model.get("open_loop", {})
        if not loads:
            continue
        first = sorted(loads, key=float)[0]
        fixed_c1 = model["rows"].get("fixed", {}).get(1) or model["rows"].get("fixed", {}).get("1")
        adaptive_c1 = model["rows"].get("adaptive", {}).get(1) or model["rows"].get("adaptive", {}).get("1")
        off_c1 = model["rows"].get("off", {}).get(1) or model["rows"].get("off", {}).get("1")
        for policy, c1 in (("fixed", fixed_c1), ("adaptive", adaptive_c1)):
            cell = loads[first].get(policy)
            if not cell or not c1:
                continue
            ratio = cell["p99_ms"] / c1["p50_ms"]
            open_rows.append(
                f"| {model_key} | {policy} | {_f(cell['rate_rps'])} ({float(first):.0%} of {_f(model['fixed_saturation_rps'])}) | "
                f"{_f(cell['throughput_rps'])} | {_f(c1['p50_ms'])} | {_f(off_c1['p50_ms']) if off_c1 else '–'} | "
                f"{_f(cell['p50_ms'])} | {_f(cell['p99_ms'])} | {_f(ratio, 2)} | "
                f"{'yes' if ratio <= GOAL_P99_FACTOR else 'no'} |"
            )
        for load_key in sorted(loads, key=float):
            fixed, adaptive = loads[load_key].get("fixed"), loads[load_key].get("adaptive")
            if fixed and adaptive:
                compare_rows.append(
                    f"| {model_key} | {float(load_key):.0%} ({_f(fixed['rate_rps'])}/s) | "
                    f"{_f(fixed['throughput_rps'])} / {_f(adaptive['throughput_rps'])} | "
                    f"{_f(fixed['p50_ms'])} / {_f(adaptive['p50_ms'])} | {_f(fixed['p99_ms'])} / {_f(adaptive['p99_ms'])} | "
                    f"{_f(adaptive['p99_ms'] / fixed['p99_ms'], 2)} | "
                    f"{_f(model.get('adaptive_target_latency_ms'), 0)} |"
                )
    if open_rows:
        lines += [
            "", "## p99 at half of saturation (open loop, Poisson arrivals)", "",
            "Arrival rate = the first open-loop load x the fixed policy's saturation (its best closed-loop "
            "images/s). Unloaded = p50 of the same policy at concurrency 1 (off-policy p50 shown for reference). "
            f"Goal: p99 <= {GOAL_P99_FACTOR:g} x unloaded.", "",
            "| model | policy | arrivals/s | served/s | unloaded p50 ms | off c=1 p50 ms | p50 ms | p99 ms | p99 / unloaded | goal met |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
            *open_rows,
        ]
    if compare_rows:
        lines += [
            "", "## Adaptive vs fixed at equal throughput (same open-loop arrival rate)", "",
            "| model | load | served/s fixed / adaptive | p50 ms fixed / adaptive | p99 ms fixed / adaptive | p99 adaptive/fixed | adaptive target ms |",
            "|---|---|---:|---:|---:|---:|---:|",
            *compare_rows,
        ]
    goal_rows = goals(results)
    if goal_rows:
        lines += ["", "## Goals (measured vs goal; not asserted)", "",
                  "| goal | measured | goal | met |", "|---|---:|---:|---|", *goal_rows]
    notes = results.get("notes", [])
    if notes:
        lines += ["", "## Notes", "", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def _cell(model: dict[str, Any], row: str, conc: int) -> dict[str, Any] | None:
    cells = model["rows"].get(row, {})
    return cells.get(conc) or cells.get(str(conc))


def goals(results: dict[str, Any]) -> list[str]:
    rows = []
    paper = results["models"].get("paper")
    if paper and paper.get("raw"):
        for row in ("fixed", "adaptive", "grpc"):
            cell = _cell(paper, row, 32)
            if cell:
                ratio = cell["throughput_rps"] / paper["raw"]["best_images_per_s"]
                rows.append(f"| paper CNN, service ({row}) at c=32 vs raw ceiling | {ratio:.0%} | "
                            f">= {GOAL_RAW_FRACTION:.0%} | {'yes' if ratio >= GOAL_RAW_FRACTION else 'no'} |")
    small = results["models"].get("small")
    if small:
        naive = _cell(small, "naive", 32)
        for row in ("fixed", "adaptive"):
            cell = _cell(small, row, 32)
            if cell and naive:
                ratio = cell["throughput_rps"] / naive["throughput_rps"]
                rows.append(f"| small CNN, service ({row}) at c=32 vs naive at c=32 | {ratio:.2f}x | "
                            f">= {GOAL_NAIVE_SPEEDUP:g}x | {'yes' if ratio >= GOAL_NAIVE_SPEEDUP else 'no'} |")
    for model_key, model in results["models"].items():
        loads = model.get("open_loop", {})
        if not loads:
            continue
        first = sorted(loads, key=float)[0]
        cell = loads[first].get("fixed")
        c1 = _cell(model, "fixed", 1)
        if cell and c1:
            ratio = cell["p99_ms"] / c1["p50_ms"]
            rows.append(f"| {model_key}: fixed, p99 at {float(first):.0%} of saturation / unloaded p50 | "
                        f"{ratio:.2f}x ({cell['p99_ms']:.1f} / {c1['p50_ms']:.1f} ms) | <= {GOAL_P99_FACTOR:g}x | "
                        f"{'yes' if ratio <= GOAL_P99_FACTOR else 'no'} |")
    return rows


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every `finally`: servers stop


def main(argv: list[str] | None = None) -> None:
    global BUSY_RETRIES
    args = parse_args(argv)
    BUSY_RETRIES = args.busy_retries
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    models = [m for m in args.models.split(",") if m]
    quiet = wait_for_quiet(args.wait_quiet_s) if args.wait_quiet_s > 0 else None
    if quiet:
        log(f"quiet check: {quiet}")
    training_at_start = training_running()
    if training_at_start:
        log("WARNING: training.train is running: the CPUs are shared, numbers will be low")
    paper_timing = CellTiming(args.warmup_s, args.paper_duration_s, args.paper_duration_s * 1.5)
    small_timing = CellTiming(args.warmup_s, args.small_duration_s, args.small_duration_s * 1.5)
    results: dict[str, Any] = {"models": {}, "notes": []}
    try:
        for key in models:
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
        "machine": machine_info(),
        "git_commit": git_commit(),
        "repeats": args.repeats,
        "warmup_s": args.warmup_s,
        "paper_duration_s": args.paper_duration_s,
        "small_duration_s": args.small_duration_s,
        "concurrency": args.concurrency,
        "open_loads": args.open_loads,
        "payload_images": 4,
        "service_overrides": _service_settings(args),
        "quiet_check": quiet,
        "training_at_start": training_at_start,
        "training_at_end": training_running(),
        "wall_min": (time.monotonic() - started) / 60,
    }
    for key, model in results["models"].items():
        busy = [f"{row} c={conc}" for row, cells in model["rows"].items() for conc, cell in cells.items()
                if (cell.get("other_cpu_cores") or 0) > 0.3]
        if busy:
            results["notes"].append(f"{key}: other jobs on the machine kept > 0.3 cores busy (median over repeats, "
                                    f"after up to {args.busy_retries} redos) during: {', '.join(busy)}; "
                                    f"those cells understate the server.")
        restarts = {row: n for row, n in model.get("server_restarts", {}).items() if n}
        if restarts:
            results["notes"].append(f"{key}: servers that died under load (SIGTERM from outside) and were "
                                    f"restarted: {restarts}.")
        if "naive_probe_c8" in model and model["naive_probe_c8"]:
            probe = ", ".join(f"{w} worker(s): {v:.1f} img/s" for w, v in model["naive_probe_c8"].items())
            results["notes"].append(f"{key}: naive baseline workers chosen by a c=8 probe ({probe}) -> "
                                    f"{model['naive_workers']}.")
    report = render(results)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(report)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    log(f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.json')} "
        f"in {(time.monotonic() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
