"""Issue 13's targets, each a ratio of figures measured side by side in the same run: PASS/MISS."""

from __future__ import annotations

from typing import Any

from bench.report import _non_model_ms, cell

RAW_FRACTION = 0.95
OPEN_P99_FACTOR = 2.0
READY_S = 10.0
WORKER_RSS_MIB = 1.2e9 / 2**20  # 1.2 GB
NON_MODEL_CPU_MS = 0.6
# (model, peer row, minimum throughput ratio service/peer at c=32); p99 must be <= the peer's too.
PEER_RATIOS = [("paper", "gthread", 1.0), ("small", "naive", 4.0), ("small", "gthread", 2.0),
               ("paper", "ray", 2.0), ("small", "ray", 2.0)]


def _row(target: str, measured: str, goal: str, ok: bool) -> dict[str, Any]:
    return {"target": target, "measured": measured, "goal": goal, "ok": ok}


def evaluate(results: dict[str, Any], row: str = "service") -> list[dict[str, Any]]:
    """Every target whose figures this run measured."""
    out: list[dict[str, Any]] = []
    models = results["models"]

    def add(target: str, measured: str, goal: str, ok: bool) -> None:
        out.append(_row(target, measured, goal, ok))

    for key, peer, ratio in PEER_RATIOS:
        model = models.get(key)
        ours, theirs = (cell(model, row, 32), cell(model, peer, 32)) if model else (None, None)
        if ours and theirs:
            got = ours["throughput_rps"] / theirs["throughput_rps"]
            add(f"{key}: service / {peer} images/s at c=32", f"{got:.2f}x", f">= {ratio:g}x", got >= ratio)
            add(f"{key}: service p99 vs {peer} p99 at c=32", f"{ours['p99_ms']:,.0f} vs {theirs['p99_ms']:,.0f} ms",
                "<=", ours["p99_ms"] <= theirs["p99_ms"])
    paper = models.get("paper")
    if paper and paper.get("raw") and cell(paper, row, 32):
        got = cell(paper, row, 32)["throughput_rps"] / paper["raw"]["best_images_per_s"]  # type: ignore[index]
        add("paper: service / in-process ceiling at c=32", f"{got:.0%}", f">= {RAW_FRACTION:.0%}", got >= RAW_FRACTION)
    for key, model in models.items():
        loads = model.get("open_loop", {})
        half = loads.get("0.5", {}).get(row)
        c1 = cell(model, row, 1)
        if half and c1:
            got = half["p99_ms"] / c1["p50_ms"]
            add(f"{key}: p99 at 50% of saturation / unloaded p50", f"{got:.2f}x ({half['p99_ms']:,.0f} / "
                f"{c1['p50_ms']:,.1f} ms)", f"<= {OPEN_P99_FACTOR:g}x", got <= OPEN_P99_FACTOR)
        server = model.get("servers", {}).get(row)
        if server:
            add(f"{key}: ready (warmed) after start", f"{server['ready_s']:.1f} s", f"<= {READY_S:g} s",
                server["ready_s"] <= READY_S)
        if server and key == "paper":
            mem = server["memory"]
            add("paper: worker RSS, peak (VmHWM) after the cells", f"{mem['max_worker_hwm_mib']:,.0f} MiB "
                f"(now {mem['max_worker_rss_mib']:,.0f})", f"<= {WORKER_RSS_MIB:,.0f} MiB (1.2 GB)",
                mem["max_worker_hwm_mib"] <= WORKER_RSS_MIB)
    small = models.get("small", {})
    if small.get("stages"):
        got = _non_model_ms(small["stages"])
        add("small: non-model CPU per image (profile)", f"{got:.2f} ms", f"<= {NON_MODEL_CPU_MS:g} ms",
            got <= NON_MODEL_CPU_MS)
    return out
