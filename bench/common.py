"""Shared pieces of bench/run.py and bench/sweep.py: models, payloads, cells, statistics."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.payloads import write_payloads
from bench.servers import REPO_ROOT, TF_ENV, HttpServer, RayServer, StandIn, naive_server, service_server


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class CellTiming:
    """How long one load-generator cell runs (warm-up discarded) for a model."""

    warmup_s: float
    duration_s: float
    open_duration_s: float


@dataclass
class ModelSetup:
    """A model ready to serve: its own repository, its version dir and its request bodies."""

    key: str
    title: str
    name: str
    repository: Path
    version_dir: Path
    payloads: list[Path]
    content_type: str
    timing: CellTiming
    info: dict[str, Any] = field(default_factory=dict)


def _training_running() -> bool:
    result = subprocess.run(["pgrep", "-f", "training.train"], check=False, capture_output=True, text=True)
    own = {str(os.getpid())}
    return any(pid and pid not in own for pid in result.stdout.split())


def training_running() -> bool:
    """True while another process runs `python -m training.train` (the CPUs are then busy)."""
    return _training_running()


def wait_for_quiet(max_wait_s: float, threshold_cores: float = 0.3, window_s: float = 10.0) -> dict[str, Any]:
    """Wait (at most max_wait_s) until the machine is idle for window_s: other jobs distort numbers."""
    from bench.loadgen import machine_busy_seconds

    started = time.monotonic()
    while True:
        before = machine_busy_seconds()
        time.sleep(window_s)
        busy = (machine_busy_seconds() - before) / window_s
        waited = time.monotonic() - started
        quiet = busy < threshold_cores and not training_running()
        if quiet or waited >= max_wait_s:
            return {"quiet": quiet, "busy_cores": round(busy, 2), "waited_s": round(waited, 1)}
        log(f"machine busy ({busy:.2f} cores, training running: {training_running()}); waiting "
            f"({waited:.0f}/{max_wait_s:.0f} s)")


def prepare_paper(tmp: Path, timing: CellTiming, images: int = 4) -> ModelSetup:
    """Copy the committed paper CNN into a private repository (a retrain cannot swap it mid-run)."""
    source_root = REPO_ROOT / "model_repository" / "cpe_cnn"
    versions = sorted(int(p.name) for p in source_root.iterdir() if p.name.isdigit())
    repository = tmp / "repo_paper"
    shutil.copytree(source_root / str(versions[-1]), repository / "cpe_cnn" / str(versions[-1]))
    version_dir = repository / "cpe_cnn" / str(versions[-1])
    payloads = write_payloads(tmp / "payloads_paper", images, 1024, 1360, "tiff", seed=1)
    fingerprint = (version_dir / "fingerprint.pb").read_bytes().hex() if (version_dir / "fingerprint.pb").exists() else ""
    return ModelSetup(
        key="paper", title="paper CNN cpe_cnn (1360x1024, 16-bit TIFF)", name="cpe_cnn",
        repository=repository, version_dir=version_dir, payloads=payloads, content_type="image/tiff",
        timing=timing,
        info={"version": versions[-1], "request_bytes": payloads[0].stat().st_size,
              "saved_model_mtime": time.strftime("%Y-%m-%d %H:%M:%S",
                                                 time.gmtime((source_root / str(versions[-1]) / "saved_model.pb").stat().st_mtime)),
              "fingerprint_hex": fingerprint[:32]},
    )


def prepare_small(tmp: Path, timing: CellTiming, images: int = 4, fmt: str = "tiff") -> ModelSetup:
    """Export the 64x64 benchmark CNN (in a subprocess: no TF runtime in the driver)."""
    repository = tmp / "repo_small"
    subprocess.run([sys.executable, "-m", "bench.small_model", "--repository", str(repository)],
                   cwd=REPO_ROOT, check=True, capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    payloads = write_payloads(tmp / "payloads_small", images, 64, 64, fmt, seed=2)
    return ModelSetup(
        key="small", title=f"small CNN small_cnn (64x64, 16-bit {fmt.upper()})", name="small_cnn",
        repository=repository, version_dir=repository / "small_cnn" / "1", payloads=payloads,
        content_type="image/tiff" if fmt == "tiff" else "image/png", timing=timing,
        info={"version": 1, "request_bytes": payloads[0].stat().st_size},
    )


def run_raw(model: ModelSetup, batch_sizes: str, duration_s: float, repeats: int) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.raw", "--model-dir", str(model.version_dir),
            "--batch-sizes", batch_sizes, "--duration-s", str(duration_s), "--repeats", str(repeats)]
    for path in model.payloads:
        argv += ["--payload", str(path)]
    done = subprocess.run(argv, cwd=REPO_ROOT, check=False, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **TF_ENV})
    if done.returncode != 0:
        raise RuntimeError(f"bench.raw failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def loadgen_argv(server_port: int, model: ModelSetup, watch_pids: list[int], *, mode: str = "closed",
                 concurrency: int = 1, rate: float = 0.0, warmup_s: float | None = None,
                 duration_s: float | None = None, seed: int = 0, payloads: list[Path] | None = None,
                 content_type: str | None = None) -> list[str]:
    """The command line of one bench/loadgen.py cell against one server."""
    timing = model.timing
    warmup = timing.warmup_s if warmup_s is None else warmup_s
    if duration_s is None:
        duration_s = timing.duration_s if mode == "closed" else timing.open_duration_s
    argv = [sys.executable, "-m", "bench.loadgen", "--port", str(server_port), "--mode", mode,
            "--content-type", content_type or model.content_type, "--warmup-s", str(warmup),
            "--duration-s", str(duration_s), "--seed", str(seed)]
    if mode == "closed":
        argv += ["--concurrency", str(concurrency)]
    else:
        argv += ["--rate", f"{rate:.4f}"]
    for path in payloads or model.payloads:
        argv += ["--payload", str(path)]
    for pid in watch_pids:
        argv += ["--watch-pid", str(pid)]
    return argv


def run_cell(server_port: int, model: ModelSetup, watch_pids: list[int], **cell_args: Any) -> dict[str, Any]:
    """One load-generator process against one server; returns its JSON summary."""
    done = subprocess.run(loadgen_argv(server_port, model, watch_pids, **cell_args), cwd=REPO_ROOT,
                          check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_cells(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric measurement over repeats; errors are summed."""
    keys = ["throughput_rps", "p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms", "loadgen_cpu_share",
            "server_cpu_cores", "machine_busy_cores", "other_cpu_cores"]
    out: dict[str, Any] = {}
    for key in keys:
        values = [c[key] for c in cells if c.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    out["errors"] = sum(c["errors"] for c in cells)
    out["requests"] = sum(c["requests"] for c in cells)
    out["repeats"] = len(cells)
    out["attempts"] = sum(c.get("attempts", 1) for c in cells)
    out["throughput_rps_all"] = [round(c["throughput_rps"], 2) for c in cells]
    out["p99_ms_all"] = [round(c["p99_ms"], 2) for c in cells]
    return out


class Deployment:
    """The processes of one configuration (a server and, for gRPC, the TF Serving stand-in).

    `restart()` replaces them all (fresh ports): used when a server died under a cell.
    """

    def __init__(self, tmp: Path, model: ModelSetup, row: str, settings: dict[str, Any] | None,
                 naive_workers: int) -> None:
        self.tmp, self.model, self.row = tmp, model, row
        self.settings = dict(settings or {})
        self.naive_workers = naive_workers
        self.server: HttpServer | None = None
        self.extra: list[Any] = []
        self.restarts = 0
        self.ready_s = 0.0

    @property
    def watch_pids(self) -> list[int]:
        assert self.server is not None
        return [self.server.pid] + [p.pid for p in self.extra]

    def alive(self) -> bool:
        return self.server is not None and self.server.alive() and all(p.alive() for p in self.extra)

    def start(self) -> Deployment:
        tmp, model, row = self.tmp, self.model, self.row
        started = time.monotonic()
        if row == "naive":
            self.server = naive_server(tmp, f"naive-{model.key}", model.version_dir, self.naive_workers)
        elif row == "gthread":
            self.server = naive_server(tmp, f"gthread-{model.key}", model.version_dir, 1, "gthread", threads=8)
        elif row == "ray":
            self.server = RayServer(tmp, f"ray-{model.key}", model.version_dir)
        else:
            base: dict[str, Any] = {"model_repository": model.repository, "model_name": model.name}
            if row == "grpc":
                standin = StandIn(tmp, model.repository)
                standin.start()
                self.extra.append(standin)
                standin.wait_ready()
                base.update(backend="tfserving_grpc", tfserving_target=standin.target, batching="fixed")
            elif row != "service":  # "service": every setting at its default
                base["batching"] = row
            base.update(self.settings)
            self.server = service_server(tmp, f"{row}-{model.key}", base)
        self.server.start()
        self.server.wait_ready()
        self.ready_s = time.monotonic() - started
        sanity_check(self.server, model)
        return self

    def memory(self) -> dict[str, Any]:
        """Resident memory now and at peak (VmHWM) of the server's processes, in MiB."""
        from bench.harden_checks import status_kb
        from bench.loadgen import _process_tree

        assert self.server is not None
        processes = []
        for pid in _process_tree([self.server.pid]):
            rss, hwm = status_kb(pid, "VmRSS"), status_kb(pid, "VmHWM")
            if rss is not None:
                processes.append({"pid": pid, "rss_mib": rss / 1024, "hwm_mib": (hwm or 0) / 1024})
        workers = processes[1:] or processes
        return {"total_rss_mib": sum(p["rss_mib"] for p in processes),
                "total_hwm_mib": sum(p["hwm_mib"] for p in processes),
                "max_worker_rss_mib": max((p["rss_mib"] for p in workers), default=0.0),
                "max_worker_hwm_mib": max((p["hwm_mib"] for p in workers), default=0.0),
                "processes": len(processes)}

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        for process in self.extra:
            process.stop()
        self.extra = []

    def restart(self) -> None:
        log(f"{self.model.key}/{self.row}: server died (exit {self.exit_codes()}); restarting")
        self.stop()
        self.restarts += 1
        self.start()

    def exit_codes(self) -> list[int | None]:
        processes = [self.server] + self.extra if self.server else self.extra
        return [p.process.poll() if p.process else None for p in processes]


def sanity_check(server: HttpServer, model: ModelSetup) -> None:
    import requests

    response = requests.post(f"{server.url}/predict", data=model.payloads[0].read_bytes(),
                             headers={"Content-Type": model.content_type}, timeout=60)
    if response.status_code != 200:
        raise RuntimeError(f"{server.name}: /predict answered {response.status_code}: {response.text[:500]}")


@contextmanager
def deploy(tmp: Path, model: ModelSetup, row: str, settings: dict[str, Any] | None = None,
           naive_workers: int = 2) -> Iterator[Deployment]:
    """Start the configuration `row` (naive, gthread, ray, service, off, fixed, adaptive, grpc) for
    `model`; stop after."""
    deployment = Deployment(tmp, model, row, settings, naive_workers)
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.stop()


def measure(deployment: Deployment, *, busy_retries: int = 2, busy_threshold: float = 0.3,
            **cell_args: Any) -> dict[str, Any]:
    """One cell, made robust on a shared machine: a cell during which the server died is redone
    after a restart; one during which other jobs kept > busy_threshold cores busy is redone up
    to busy_retries times, keeping the attempt with the least foreign CPU."""
    best: dict[str, Any] | None = None
    attempts = 0
    deaths = 0
    while True:
        assert deployment.server is not None
        cell = run_cell(deployment.server.port, deployment.model, deployment.watch_pids, **cell_args)
        if cell.get("server_down") or not deployment.alive():
            deaths += 1
            if deaths > 2:
                raise RuntimeError(f"{deployment.row}: server keeps dying: {deployment.exit_codes()}")
            deployment.restart()
            continue
        attempts += 1
        cell["attempts"] = attempts
        other = cell.get("other_cpu_cores") or 0.0
        if best is None or other < (best.get("other_cpu_cores") or 0.0):
            best = cell
        if other <= busy_threshold or attempts > busy_retries:
            best["attempts"] = attempts
            return best
        log(f"  (other jobs used {other:.2f} cores during the cell; redoing it)")


def git_commit() -> str:
    """HEAD of the checkout, with '+dirty' when service/ has uncommitted changes."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, check=False, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "service"], cwd=REPO_ROOT,
                           check=False, capture_output=True, text=True)
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for module in ("tensorflow", "flask", "gunicorn", "numpy", "tifffile", "grpc"):
        try:
            from importlib.metadata import version

            name = {"tensorflow": "tensorflow-cpu", "grpc": "grpcio"}.get(module, module)
            versions[module] = version(name)
        except Exception:  # noqa: BLE001
            versions[module] = "?"
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "python": platform.python_version(),
            "kernel": platform.release(), "versions": versions}
