"""The Markdown report of bench/run.py: tables side by side, then issue 13's targets, PASS/MISS."""

from __future__ import annotations

import json
import math
from typing import Any

from bench.stages import NATIVE, STAGES

ROW_TITLES = {
    "raw": "raw ceiling (in-process, best batch)",
    "naive": "naive Flask, Gunicorn sync",
    "gthread": "naive Flask, Gunicorn gthread x8, 1 worker",
    "ray": "Ray Serve, @serve.batch, 1 replica",
    "service": "this service, defaults",
    "off": "service, batching off",
    "fixed": "service, fixed batching",
    "adaptive": "service, adaptive batching",
    "grpc": "service -> gRPC TF Serving stand-in, fixed",
}
HTTP_ROWS = [row for row in ROW_TITLES if row != "raw"]


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def cell(model: dict[str, Any], row: str, conc: int, table: str = "rows") -> dict[str, Any] | None:
    """A row's median cell at one concurrency (JSON round trips turn the keys into strings)."""
    cells = model.get(table, {}).get(row, {})
    return cells.get(conc) or cells.get(str(conc))


def _title(model: dict[str, Any], row: str) -> str:
    title = ROW_TITLES[row]
    if row == "naive":
        title += f" ({model.get('naive_workers')} worker{'s' if model.get('naive_workers') != 1 else ''})"
    if row == "adaptive":
        title += f" (target {model.get('adaptive_target_latency_ms'):g} ms)"
    return title


def _header(meta: dict[str, Any]) -> list[str]:
    machine = meta["machine"]
    return [
        f"# Serving benchmark — {meta['date']}", "",
        (f"Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), no GPU; Python {machine['python']}, "
        f"TensorFlow {machine['versions'].get('tensorflow')}, gunicorn {machine['versions'].get('gunicorn')}, "
        f"Flask {machine['versions'].get('flask')}; peers from the bench venv ({meta.get('peer_versions', '?')})."),
        (f"Service code: commit {meta.get('git_commit', '?')}. Command: `{meta['command']}` — {meta['repeats']} "
        f"repeat(s) per cell, medians reported; closed-loop cells {meta['warmup_s']:g} s warm-up (discarded) + "
        f"{meta['paper_duration_s']:g} s (paper) / {meta['small_duration_s']:g} s (small) measured; "
        f"wall time {meta['wall_min']:.1f} min."),
        (f"Load generators: bench/loadgen.py (asyncio, its own process) and wrk ({meta.get('wrk', '?')}; one thread, "
        "bench/wrk_post.lua), one keep-alive connection per client, one image per request unless noted. "
        "`LG CPU` = load generator CPU s / wall s; `srv CPU` = cores used by the server's process tree; "
        "`other CPU` = cores busy with anything else on the machine (should be ~0 on a quiet box)."),
        (f"Service settings: defaults unless noted"
        f"{': overrides ' + json.dumps(meta['service_overrides']) if meta['service_overrides'] else ''}. "
        f"Training running at start/end: {meta['training_at_start']}/{meta['training_at_end']}."), "",
    ]


def _side_by_side(results: dict[str, Any], conc: int) -> list[str]:
    models = results["models"]
    lines = [f"## Side by side: images/s at concurrency {conc} (p99)", "",
             "| configuration | " + " | ".join(m["title"] for m in models.values()) + " |",
             "|---|" + "---:|" * len(models)]
    for row, title in ROW_TITLES.items():
        parts = []
        for model in models.values():
            if row == "raw":
                raw = model.get("raw")
                parts.append(f"{_f(raw['best_images_per_s'])} (batch {raw['best_batch_size']})" if raw else "–")
                continue
            c = cell(model, row, conc)
            parts.append(f"{_f(c['throughput_rps'])} ({_f(c['p99_ms'], 0)} ms)" if c else "–")
        if any(part != "–" for part in parts):
            lines.append(f"| {title} | " + " | ".join(parts) + " |")
    return lines + [""]


def _closed_loop(results: dict[str, Any]) -> list[str]:
    lines = ["## Closed loop, every cell (Python load generator; `wrk` rows: the same cell by wrk)", "",
             ("| model | configuration | conc. | images/s | p50 ms | p99 ms | wrk req/s | wrk p50 | wrk p99 | "
             "x naive sync | errors | LG CPU (wrk) | srv CPU | other CPU |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, model in results["models"].items():
        for row in HTTP_ROWS:
            for conc in sorted(int(c) for c in model["rows"].get(row, {})):
                c, w, base = cell(model, row, conc), cell(model, row, conc, "wrk"), cell(model, "naive", conc)
                assert c is not None
                vs = c["throughput_rps"] / base["throughput_rps"] if base and row != "naive" else None
                lines.append(
                    f"| {key} | {_title(model, row)} | {conc} | {_f(c['throughput_rps'])} | {_f(c['p50_ms'])} | "
                    f"{_f(c['p99_ms'])} | {_f(w and w['throughput_rps'])} | {_f(w and w['p50_ms'])} | "
                    f"{_f(w and w['p99_ms'])} | {_f(vs, 2)} | {c['errors']}{'/' + str(w['errors']) if w else ''} | "
                    f"{_f(c['loadgen_cpu_share'], 2)} ({_f(w and w['loadgen_cpu_share'], 2)}) | "
                    f"{_f(c['server_cpu_cores'], 2)} | {_f(c.get('other_cpu_cores'), 2)} |")
    lines += ["", "Raw ceiling by batch size (images/s):", ""]
    for key, model in results["models"].items():
        if model.get("raw"):
            lines.append(f"- {key}: " + ", ".join(f"{bs}: {_f(v['images_per_s'])}"
                                                  for bs, v in model["raw"]["by_batch_size"].items()))
    return lines + [""]


def _servers(results: dict[str, Any]) -> list[str]:
    lines = ["## Servers: time to ready and memory after their cells", "",
             "| model | configuration | ready s | largest worker RSS MiB (peak) | all processes RSS MiB | processes |",
             "|---|---|---:|---:|---:|---:|"]
    for key, model in results["models"].items():
        for row, info in model.get("servers", {}).items():
            mem = info["memory"]
            lines.append(f"| {key} | {_title(model, row)} | {_f(info['ready_s'])} | "
                         f"{_f(mem['max_worker_rss_mib'], 0)} ({_f(mem['max_worker_hwm_mib'], 0)}) | "
                         f"{_f(mem['total_rss_mib'], 0)} | {mem['processes']} |")
    return lines + [""]


def _stages(results: dict[str, Any]) -> list[str]:
    profiled = {key: m["stages"] for key, m in results["models"].items() if m.get("stages")}
    if not profiled:
        return []
    lines = ["## Service CPU per image by stage (each thread's CPU from /proc, split by its py-spy samples; TensorFlow's pools = model)", "",
             "| stage | " + " | ".join(f"{key} ms/image (share)" for key in profiled) + " |",
             "|---|" + "---:|" * len(profiled)]
    for stage in STAGES:
        parts = []
        for prof in profiled.values():
            ms = prof["cpu_ms_per_image"].get(stage, 0.0)
            parts.append(f"{ms:.3f} ({ms / prof['total_cpu_ms_per_image']:.0%})")
        lines.append(f"| {stage} | " + " | ".join(parts) + " |")
    totals = [f"**{p['total_cpu_ms_per_image']:.3f}**" for p in profiled.values()]
    non_model = [f"{_non_model_ms(p):.3f}" for p in profiled.values()]
    lines += ["| **total (worker CPU / images)** | " + " | ".join(totals) + " |",
              "| non-model (total − model − TF threads) | " + " | ".join(non_model) + " |", "",
              "Cells: " + "; ".join(f"{key} c={p['concurrency']}, {p['window_s']:.1f} s, {p['images']:.0f} images, "
                                    f"{p['samples']} samples at {p['sampling_rate_hz']} Hz"
                                    for key, p in profiled.items()), ""]
    return lines


def _non_model_ms(profile: dict[str, Any]) -> float:
    ms = profile["cpu_ms_per_image"]
    return float(profile["total_cpu_ms_per_image"] - ms.get("model", 0.0) - ms.get(NATIVE, 0.0))


def _capacity(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    multi = {k: m["images_per_request"] for k, m in results["models"].items() if m.get("images_per_request")}
    if multi:
        lines += ["## Images per request (service defaults, multipart, ~32 images in flight)", "",
                  "| model | images/request | clients | images/s | request p50 ms | request p99 ms | errors |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for key, rows in multi.items():
            for wanted, c in rows.items():
                count = f"{c['images_per_request']}" + (f" (of {wanted}: 64 MiB body limit)"
                                                        if c["images_per_request"] != int(wanted) else "")
                lines.append(f"| {key} | {count} | {c['concurrency']} | {_f(c['images_per_s'])} | {_f(c['p50_ms'])} | "
                             f"{_f(c['p99_ms'])} | {c['errors']} |")
        lines.append("")
    sweep = {k: m["workers"] for k, m in results["models"].items() if m.get("workers")}
    if sweep:
        lines += ["## Workers per pod (service defaults + SERVING_WORKERS, c=32; pod limit 3 GiB)", "",
                  ("| model | workers | images/s | p99 ms | largest worker RSS MiB (peak) | all RSS MiB (sum of peaks) | "
                  "fits 3 GiB |"), "|---|---:|---:|---:|---:|---:|---|"]
        for key, rows in sweep.items():
            for count, c in rows.items():
                if "error" in c:
                    lines.append(f"| {key} | {count} | {c['error'][:120]} | | | | |")
                    continue
                mem = c.get("memory", {})
                lines.append(f"| {key} | {count} | {_f(c['throughput_rps'])} | {_f(c['p99_ms'], 0)} | "
                             f"{_f(mem.get('max_worker_rss_mib'), 0)} ({_f(mem.get('max_worker_hwm_mib'), 0)}) | "
                             f"{_f(mem.get('total_rss_mib'), 0)} ({_f(mem.get('total_hwm_mib'), 0)}) | "
                             f"{'yes' if mem.get('total_hwm_mib', 1e9) <= 3072 else 'no'} |")
        lines.append("")
    return lines


def _open_loop(results: dict[str, Any]) -> list[str]:
    rows = []
    for key, model in results["models"].items():
        for load, by_row in sorted(model.get("open_loop", {}).items(), key=lambda kv: float(kv[0])):
            for row, c in by_row.items():
                c1 = cell(model, row, 1)
                ratio = c["p99_ms"] / c1["p50_ms"] if c1 else None
                rows.append(f"| {key} | {_title(model, row)} | {_f(c['rate_rps'])} ({float(load):.0%} of "
                            f"{_f(model.get('saturation_rps'))}) | {_f(c['throughput_rps'])} | "
                            f"{_f(c1 and c1['p50_ms'])} | {_f(c['p50_ms'])} | {_f(c['p99_ms'])} | {_f(ratio, 2)} |")
    if not rows:
        return []
    return ["## Open loop (Poisson arrivals at a fraction of the service's saturation)", "",
            "Latency counted from each request's scheduled arrival. Unloaded = p50 of the same row at c=1.", "",
            "| model | configuration | arrivals/s | served/s | unloaded p50 ms | p50 ms | p99 ms | p99 / unloaded |",
            "|---|---|---:|---:|---:|---:|---:|---:|", *rows, ""]


def render(results: dict[str, Any], targets: list[dict[str, Any]]) -> str:
    """The whole report."""
    lines = _header(results["meta"]) + _side_by_side(results, 32) + _closed_loop(results) + _servers(results)
    lines += _stages(results) + _capacity(results) + _open_loop(results)
    if targets:
        noisy = any("other jobs" in note for note in results.get("notes", []))
        lines += ["## Issue 13 targets (ratios within this run; not asserted)", ""]
        if noisy:
            lines += ["**Other jobs were busy during this run (see Notes): these verdicts say nothing.**", ""]
        lines += [
                  "| target | measured | goal | result |", "|---|---:|---:|---|"]
        lines += [f"| {t['target']} | {t['measured']} | {t['goal']} | {'PASS' if t['ok'] else 'MISS'} |"
                  for t in targets]
        lines.append("")
    notes = results.get("notes", [])
    if notes:
        lines += ["## Notes", "", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"
