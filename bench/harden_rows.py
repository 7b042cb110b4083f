"""The six checks of `make harden` (bench/harden.py): each starts its own Gunicorn on a free
127.0.0.1 port, drives it with bench/harden_load.py in its own process and returns one table row."""

from __future__ import annotations

import argparse
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import log
from bench.harden_checks import (
    RssSampler,
    bad_list,
    children,
    error_code,
    fate_counts,
    finish_load,
    fmt,
    hostile_set,
    last_done,
    latencies_ms,
    loaded_lines,
    median,
    p99,
    ready_streak,
    row,
    run_load,
    secs,
    stalled_uploads,
    status_counts,
    status_kb,
    tally,
)
from bench.payloads import write_payloads
from bench.servers import REPO_ROOT, HttpServer, service_server

ROWS = ["overload", "sigterm", "sigkill", "stalled", "hostile", "soak"]
FAILED_FATES = ("lost", "timeout", "unfinished")
RSS_GROWTH_BUDGET_MB = 512.0
REPLACE_LIMIT_S = 120.0


class Campaign:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.quick = args.quick
        source = REPO_ROOT / "model_repository" / "cpe_cnn"
        version = max(int(p.name) for p in source.iterdir() if p.name.isdigit())
        self.repository = tmp / "repo"  # a private copy: a retrain cannot swap the model mid-run
        shutil.copytree(source / str(version), self.repository / "cpe_cnn" / str(version))
        self.payloads = write_payloads(tmp / "payloads", 4, 64, 64, "tiff", seed=5)
        self.capacity: float | None = None
        self.capacity_detail: dict[str, Any] = {}

    def server(self, name: str, **settings: Any) -> HttpServer:
        base = {"model_repository": self.repository, "model_name": "cpe_cnn", **settings}
        server = service_server(self.tmp, name, base)
        started = time.monotonic()
        server.start()
        server.wait_ready(timeout_s=240)
        log(f"{name}: ready in {time.monotonic() - started:.0f} s (settings {settings or 'default'})")
        return server

    def measure_capacity(self, server: HttpServer) -> float:
        """Closed loop c=8: answered 200/s after a 2 s warm-up."""
        if self.capacity is None:
            duration = 6.0 if self.quick else 12.0
            run = run_load(server.port, self.payloads, mode="closed", concurrency=8, duration_s=duration)
            done = [s for s in run["samples"] if s[2] == 200 and s[1] is not None and 2.0 <= s[1] < duration]
            self.capacity = max(len(done) / (duration - 2.0), 1.0)
            self.capacity_detail = {"concurrency": 8, "window_s": duration - 2.0, "ok": len(done),
                                    "capacity_rps": round(self.capacity, 2)}
            log(f"capacity C = {self.capacity:.1f} img/s")
        return self.capacity

    # --- rows -----------------------------------------------------------------------------------

    def overload(self) -> dict[str, Any]:
        seconds = 8.0 if self.quick else self.args.overload_s
        edge = min(10.0, seconds / 3)
        server = self.server("overload")
        try:
            capacity = self.measure_capacity(server)
            before = children(server.pid)
            with RssSampler(server.pid) as sampler:
                run = run_load(server.port, self.payloads, mode="open", rate=3 * capacity, duration_s=seconds, seed=1)
            after = children(server.pid)
        finally:
            server.stop()
        statuses = status_counts(run["samples"])
        fates = fate_counts(run["samples"])
        answered = sum(1 for s in run["samples"] if s[2])
        first, last = median(sampler.totals_mb(0, edge)), median(sampler.totals_mb(seconds - edge, seconds))
        drift = abs(last - first) / first if first else float("nan")
        ok = (set(statuses) <= {"200", "503", "504"} and not fates and answered == run["sent"]
              and before == after and drift <= 0.10)
        measured = (f"C={capacity:.1f} img/s (closed c=8); open 3C={3 * capacity:.1f}/s for {seconds:.0f} s: "
                    f"sent {run['sent']}, answered {answered} {fmt(statuses)}, conn errors {fmt(fates) or 0}; "
                    f"p99(200) {p99(latencies_ms(run['samples'])):.0f} ms; workers {before}→{after}; "
                    f"RSS {first:.0f}→{last:.0f} MB ({drift:+.1%} abs)")
        return row("overload", "1. 3× capacity open loop", measured,
                    "only 200/503/504, sent == answered, same worker PIDs, RSS within 10%", ok,
                    {"capacity": self.capacity_detail, "rate_rps": 3 * capacity, "duration_s": seconds,
                     "sent": run["sent"], "answered": answered, "statuses": statuses, "fates": fates,
                     "workers_before": before, "workers_after": after, "rss_first_mb": first,
                     "rss_last_mb": last, "rss_drift": drift, "p99_ms": p99(latencies_ms(run["samples"]))})

    def sigterm(self) -> dict[str, Any]:
        server = self.server("sigterm")
        try:
            capacity = self.measure_capacity(server)
            at = 2.0 if self.quick else 3.0
            run = run_load(server.port, self.payloads, mode="open", rate=2 * capacity, duration_s=at + 5.0,
                           signal_pid=server.pid, signal_name="SIGTERM", signal_at_s=at, seed=2)
            assert server.process is not None
            try:
                code: int | None = server.process.wait(60)
            except Exception:  # noqa: BLE001
                code = None
        finally:
            server.stop()
        samples = run["samples"]
        accepted = [s for s in samples if s[3] != "refused"]
        answered = [s for s in accepted if s[2]]
        lost = [s for s in accepted if s[3] in FAILED_FATES]
        # A connection the kernel completed after the SIGTERM (the worker keeps its copy of the
        # listening socket open while it drains) is accepted as far as the client can tell.
        signal_s = run.get("signal_s", at)
        lost_late = [s for s in lost if s[4] is not None and s[4] >= signal_s]
        statuses = status_counts(accepted)
        ok = not lost and set(statuses) <= {"200"}
        measured = (f"open 2C={2 * capacity:.1f}/s, SIGTERM to the master at {signal_s:.1f} s "
                    f"({run.get('in_flight_at_signal', '?')} in flight): accepted (connected, request sent) "
                    f"{len(accepted)}, answered {len(answered)} {fmt(statuses)}, lost {len(lost)} (no status; "
                    f"{len(lost_late)} of them on connections opened after the SIGTERM, reset at "
                    f"{last_done(lost)} s); refused at connect {len(samples) - len(accepted)}; master exit {code}")
        return row("sigterm", "2. SIGTERM under load", measured, "lost == 0, every accepted request 200", ok,
                    {"rate_rps": 2 * capacity, "signal_s": run.get("signal_s"), "in_flight": run.get("in_flight_at_signal"),
                     "accepted": len(accepted), "answered": len(answered), "lost": len(lost),
                     "lost_connected_after_signal": len(lost_late), "statuses": statuses,
                     "refused": len(samples) - len(accepted), "exit_code": code,
                     "lost_samples": lost[:20]})

    def sigkill(self) -> dict[str, Any]:
        server = self.server("sigkill", workers=2)
        try:
            capacity = self.measure_capacity(server)
            workers = children(server.pid)
            victim = workers[0]
            # A new worker accepts only once its app is created: /readyz probes then mostly reach the
            # survivor, so the replacement's readiness is its own log line (one per loaded worker).
            loaded_before = loaded_lines(server)
            at = 2.0 if self.quick else 3.0
            load = run_load(server.port, self.payloads, mode="open", rate=capacity, duration_s=at + 6.0,
                            signal_pid=victim, signal_name="SIGKILL", signal_at_s=at, seed=3, background=True)
            while Path(f"/proc/{victim}").exists() and status_kb(victim, "VmRSS") is not None:
                time.sleep(0.02)
            killed = time.monotonic()
            replaced_s = ready_s = None
            while time.monotonic() - killed < REPLACE_LIMIT_S:
                now = children(server.pid)
                if replaced_s is None and len(now) == len(workers) and victim not in now:
                    replaced_s = time.monotonic() - killed
                if (replaced_s is not None and loaded_lines(server) > loaded_before
                        and ready_streak(server.url, 16)):
                    ready_s = time.monotonic() - killed
                    break
                time.sleep(0.1)
            run = finish_load(load)
            after = children(server.pid)
        finally:
            server.stop()
        samples, kill_s = run["samples"], run.get("signal_s", at)
        failed = [s for s in samples if s[3] in FAILED_FATES or s[3] == "refused"]
        late = [s for s in failed if s[0] > kill_s + 0.5]
        statuses = status_counts(samples)
        in_flight = run.get("in_flight_at_signal", 0)
        ok = (len(failed) <= in_flight and not late and replaced_s is not None and ready_s is not None
              and set(statuses) <= {"200", "503", "504"})
        measured = (f"2 workers, open C={capacity:.1f}/s, SIGKILL worker {victim} at {kill_s:.1f} s with "
                    f"{in_flight} requests in flight (whole server): failed {len(failed)} (after the kill: "
                    f"{len(late)}), answered {fmt(statuses)}; new PID after "
                    f"{secs(replaced_s)}, its model loaded (log) and /readyz 16×200 after {secs(ready_s)}; workers "
                    f"{workers}→{after}")
        return row("sigkill", "3. worker SIGKILLed under load", measured,
                    f"failed ≤ in flight, none sent later, replaced and ready ≤ {REPLACE_LIMIT_S:.0f} s", ok,
                    {"victim": victim, "kill_s": kill_s, "in_flight": in_flight, "failed": len(failed),
                     "failed_after_kill": len(late), "statuses": statuses, "replaced_s": replaced_s,
                     "ready_s": ready_s, "workers_before": workers, "workers_after": after,
                     "failed_samples": failed[:20]})

    def stalled(self) -> dict[str, Any]:
        read_timeout, count = 5.0, (16 if self.quick else 32)
        server = self.server("stalled", request_read_timeout_s=read_timeout, threads=16)
        seconds = 5.0 if self.quick else 10.0
        try:
            base = run_load(server.port, self.payloads, mode="closed", concurrency=2, duration_s=seconds)
            result: dict[str, Any] = {}
            stall = threading.Thread(target=lambda: result.update(
                r=stalled_uploads(server.port, count, read_timeout + 10.0)))
            stall.start()
            time.sleep(0.3)
            loaded = run_load(server.port, self.payloads, mode="closed", concurrency=2, duration_s=read_timeout + 3.0)
            stall.join()
        finally:
            server.stop()
        unloaded_p99 = p99(latencies_ms(base["samples"]))
        loaded_p99 = p99(latencies_ms(loaded["samples"]))
        stalls = result.get("r", [])
        limit_s = read_timeout + 2.0
        in_time = [r for r in stalls if r["status"] == 408 and r["answered_after_s"] is not None
                   and r["answered_after_s"] <= limit_s]
        slowest = max((r["answered_after_s"] or 99.0 for r in stalls), default=float("nan"))
        loaded_errors = {k: v for k, v in status_counts(loaded["samples"]).items() if k != "200"}
        loaded_errors |= fate_counts(loaded["samples"])
        ok = loaded_p99 <= 2 * unloaded_p99 and len(in_time) == count and not loaded_errors
        measured = (f"SERVING_REQUEST_READ_TIMEOUT_S=5, SERVING_THREADS=16, 1 worker: normal closed c=2 p99 "
                    f"{unloaded_p99:.0f} ms alone → {loaded_p99:.0f} ms beside {count} stalled uploads "
                    f"({len(latencies_ms(loaded['samples']))} ok, errors {fmt(loaded_errors) or 0}); stalled "
                    f"closed with 408 in ≤ {limit_s:.0f} s: {len(in_time)}/{count} "
                    f"(statuses {fmt(tally(str(r['status']) for r in stalls))}, slowest {slowest:.1f} s)")
        return row("stalled", "4. stalled uploads + normal traffic", measured,
                    f"p99 ≤ 2× unloaded; all stalled 408 ≤ {limit_s:.0f} s", ok,
                    {"read_timeout_s": read_timeout, "threads": 16, "stalled": count, "unloaded_p99_ms": unloaded_p99,
                     "loaded_p99_ms": loaded_p99, "loaded_errors": loaded_errors, "stalled_results": stalls})

    def hostile(self) -> dict[str, Any]:
        source, items = hostile_set(REPO_ROOT / "tests" / "hostile")
        server = self.server("hostile")
        results = []
        try:
            workers = children(server.pid)
            hwm_before = max((status_kb(p, "VmHWM") or 0) for p in workers) / 1024
            rss_before = max((status_kb(p, "VmRSS") or 0) for p in workers) / 1024
            with RssSampler(server.pid, interval_s=0.1) as sampler:
                for item in items:
                    started = time.monotonic()
                    try:
                        response = requests.post(server.url + item["path"], data=item["body"], timeout=15,
                                                 headers={"Content-Type": item["content_type"]})
                        status, code = response.status_code, error_code(response)
                    except requests.RequestException as err:
                        status, code = 0, type(err).__name__
                    results.append({"name": item["name"], "route": item["path"], "bytes": len(item["body"]),
                                    "status": status, "code": code, "seconds": round(time.monotonic() - started, 3)})
            after = children(server.pid)
            hwm = max((status_kb(p, "VmHWM") or 0) for p in after) / 1024 if after else float("nan")
        finally:
            server.stop()
        sampled = max((max(rss.values()) / 1024 for _, rss in sampler.samples if rss), default=float("nan"))
        # The worker's own warm-up (every batch shape at 1360x1024) already peaks far above the
        # steady RSS, so VmHWM alone says little: the budget is growth over the RSS just before.
        growth = max(sampled - rss_before, hwm - hwm_before)
        bad = [r for r in results if not 400 <= r["status"] < 500 or r["seconds"] > 1.0]
        ok = not bad and growth <= RSS_GROWTH_BUDGET_MB and workers == after
        measured = (f"{len(results)} files ({source}): statuses {fmt(tally(str(r['status']) for r in results))}, "
                    f"max {max(r['seconds'] for r in results):.2f} s; not 4xx-in-1 s: "
                    f"{bad_list(bad)}; "
                    f"worker RSS {rss_before:.0f} MB before, sampled peak {sampled:.0f} MB (+{growth:.0f} MB), VmHWM "
                    f"{hwm_before:.0f}→{hwm:.0f} MB (warm-up peak); workers {workers}→{after}")
        return row("hostile", "5. hostile files", measured, f"each 4xx in ≤ 1 s, worker RSS growth ≤ {RSS_GROWTH_BUDGET_MB:.0f} MB",
                    ok, {"source": source, "files": results, "vmhwm_before_mb": hwm_before, "vmhwm_after_mb": hwm,
                         "sampled_peak_mb": sampled, "rss_before_mb": rss_before, "rss_growth_mb": growth, "workers_before": workers, "workers_after": after})

    def soak(self) -> dict[str, Any]:
        seconds = 20.0 if self.quick else self.args.soak_s
        window = min(60.0, seconds / 4)
        server = self.server("soak")
        try:
            capacity = self.measure_capacity(server)
            with RssSampler(server.pid) as sampler:
                run = run_load(server.port, self.payloads, mode="open", rate=0.7 * capacity, duration_s=seconds, seed=4)
        finally:
            server.stop()
        samples = run["samples"]
        first, last = p99(latencies_ms(samples, 0, window)), p99(latencies_ms(samples, seconds - window, seconds))
        rss2 = median(sampler.totals_mb(window, 2 * window))
        rss_last = median(sampler.totals_mb(seconds - window, seconds))
        growth = (rss_last - rss2) / rss2 if rss2 else float("nan")
        ratio = last / first if first else float("nan")
        errors = {k: v for k, v in (status_counts(samples) | fate_counts(samples)).items() if k != "200"}
        ok = ratio <= 1.5 and growth <= 0.05
        # Per window: the p99 and the cores other jobs took (a shared machine shows up here).
        edges = [i * window for i in range(int(seconds // window))]
        per_window = [[round(p99(latencies_ms(samples, a, a + window))), round(sampler.other_cores(a, a + window), 2)]
                      for a in edges]
        measured = (f"open 0.7C={0.7 * capacity:.1f}/s for {seconds:.0f} s ({run['sent']} requests, non-200 "
                    f"{fmt(errors) or 0}): p99 first {window:.0f} s {first:.0f} ms → last {last:.0f} ms "
                    f"(×{ratio:.2f}); worker RSS {rss2:.0f} → {rss_last:.0f} MB ({growth:+.1%}); per "
                    f"{window:.0f} s [p99 ms, other jobs' cores]: {per_window}")
        return row("soak", "6. soak at 70% capacity", measured, "p99 ratio ≤ 1.5, RSS growth ≤ 5%", ok,
                    {"rate_rps": 0.7 * capacity, "duration_s": seconds, "window_s": window, "sent": run["sent"],
                     "errors": errors, "p99_first_ms": first, "p99_last_ms": last, "ratio": ratio,
                     "rss_second_window_mb": rss2, "rss_last_window_mb": rss_last, "rss_growth": growth,
                     "per_window_p99_ms_other_cores": per_window})
