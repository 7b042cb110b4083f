"""The independent load generator: wrk (C, Debian package `wrk`) with bench/wrk_post.lua.

It cross-checks bench/loadgen.py: the same server, payloads, concurrency and cell length,
closed loop, one keep-alive connection per client (reconnecting where the server closes).
A discarded warm-up run comes first, as loadgen's warm-up window does, and after each run the
server is left to finish what wrk abandoned in flight (`settle`). Latency percentiles
are wrk's own (its `done()` hook prints them as JSON; `--latency` keeps its text table in the
log). Install: `apt-get install wrk`; without it the wrk rows are left out with a note.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.loadgen import _process_tree, cpu_seconds, machine_busy_seconds
from bench.servers import REPO_ROOT

SCRIPT = REPO_ROOT / "bench" / "wrk_post.lua"


def wrk_path() -> str | None:
    """The wrk binary, or None when it is not installed."""
    return shutil.which("wrk")


def wrk_version() -> str:
    """wrk's version line, or "not installed"."""
    path = wrk_path()
    if not path:
        return "not installed"
    done = subprocess.run([path, "-v"], check=False, capture_output=True, text=True)
    lines = (done.stdout or done.stderr).splitlines()
    return lines[0] if lines else "?"


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _wrk(port: int, payloads: list[Path], content_type: str, concurrency: int, duration_s: float,
         path: str = "/predict") -> dict[str, Any]:
    wrk = wrk_path()
    assert wrk is not None
    # One thread: it drives 32 connections with epoll at a small fraction of a core, like loadgen.
    argv = [wrk, "-t1", f"-c{concurrency}", f"-d{max(1, round(duration_s))}s", "--timeout", "60s", "--latency",
            "-s", str(SCRIPT), f"http://127.0.0.1:{port}{path}", "--", *map(str, payloads)]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, env={**os.environ, "WRK_CONTENT_TYPE": content_type})
    summary = next((line for line in reversed(done.stdout.splitlines()) if line.startswith("{")), None)
    if done.returncode != 0 or summary is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(summary)
    result["text"] = done.stdout[: done.stdout.rfind("{")].strip()
    return result


def settle(pids: list[int], idle_cores: float = 0.15, timeout_s: float = 60.0) -> float:
    """Wait until the server's processes are idle; returns the seconds waited.

    wrk stops on time with requests in flight and closes their connections, but the server
    still computes what it has queued: the next cell must not start behind that backlog.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        before = cpu_seconds(pids)
        time.sleep(0.5)
        if (cpu_seconds(pids) - before) / 0.5 < idle_cores:
            break
    return time.monotonic() - started


def run_wrk_cell(port: int, payloads: list[Path], content_type: str, watch_pids: list[int], concurrency: int,
                 warmup_s: float, duration_s: float) -> dict[str, Any]:
    """A warm-up run (discarded), then the measured run; loadgen's cell fields, from wrk."""
    watched = _process_tree(watch_pids)
    if warmup_s > 0:
        _wrk(port, payloads, content_type, concurrency, warmup_s)
        settle(watched)
    server0, busy0, own0 = cpu_seconds(watched), machine_busy_seconds(), _children_cpu_s()
    run = _wrk(port, payloads, content_type, concurrency, duration_s)
    server, busy, own = cpu_seconds(watched) - server0, machine_busy_seconds() - busy0, _children_cpu_s() - own0
    settled_s = settle(watched)
    wall = run["duration_us"] / 1e6
    errors = sum(run[key] for key in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    return {
        "tool": "wrk", "concurrency": concurrency, "requests": run["requests"], "errors": errors,
        "throughput_rps": (run["requests"] - run["status_errors"]) / wall,
        "p50_ms": run["p50_us"] / 1000, "p90_ms": run["p90_us"] / 1000, "p99_ms": run["p99_us"] / 1000,
        "max_ms": run["max_us"] / 1000, "mean_ms": run["mean_us"] / 1000,
        "loadgen_cpu_share": own / wall, "server_cpu_cores": server / wall,
        "other_cpu_cores": max(busy - server - own, 0.0) / wall, "window_s": wall, "latency_table": run["text"],
        "settle_s": settled_s,
    }
