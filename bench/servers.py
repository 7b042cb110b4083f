"""Start and stop the processes under test, all on 127.0.0.1 free ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A child process with its log file; `stop()` sends SIGTERM then SIGKILL."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(self.argv, cwd=REPO_ROOT, env=self.env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own session: only its workers
            self.process.wait()


#: What every TensorFlow process of the benchmark runs with (servers, peers, the ceiling), so that
#: they differ in how they serve, not in their kernels: the service's gunicorn_conf turns oneDNN on
#: by default, which stock TensorFlow leaves off on CPUs without VNNI/AMX (4-8x slower there).
TF_ENV = {"TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1")}


def _base_env(tmp: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SERVING_")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(TF_ENV)
    return env


class HttpServer(Process):
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path, port: int) -> None:
        super().__init__(name, argv, env, log_path)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout_s: float = 180.0, path: str = "/readyz", consecutive: int = 8) -> None:
        """Until `consecutive` probes in a row (fresh connections, so any worker) answer 200."""
        deadline = time.monotonic() + timeout_s
        streak = 0
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                ok = requests.get(f"{self.url}{path}", timeout=2).status_code == 200
            except requests.RequestException:
                ok = False
            streak = streak + 1 if ok else 0
            if streak >= consecutive:
                return
            time.sleep(0.05 if ok else 0.25)
        raise TimeoutError(f"{self.name}: {path} not ready after {timeout_s} s:\n{self.log_tail()}")


def service_server(tmp: Path, name: str, settings: dict[str, object]) -> HttpServer:
    """This service under its own gunicorn config; `settings` become SERVING_* variables."""
    port = free_port()
    env = _base_env(tmp)
    env.update({f"SERVING_{key.upper()}": str(value) for key, value in settings.items()})
    env.update(SERVING_HOST="127.0.0.1", PORT=str(port), SERVING_PORT=str(port),
               PROMETHEUS_MULTIPROC_DIR=str(tmp / f"metrics-{port}"))
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:service.gunicorn_conf", "service.app:create_app()"]
    return HttpServer(name, argv, env, tmp / f"{name}-{port}.log", port)


def peer_python() -> str:
    """The bench venv's interpreter (`make bench-venv`), where the peers and Ray live, not the
    service's venv; BENCH_PYTHON overrides it."""
    python = os.environ.get("BENCH_PYTHON") or str(REPO_ROOT / ".venv-bench" / "bin" / "python")
    if not Path(python).exists():
        raise FileNotFoundError(f"{python} missing: run `make bench-venv` (or set BENCH_PYTHON)")
    return python


def peer_versions() -> str:
    """Ray's and py-spy's versions in the bench venv, for the report."""
    code = "from importlib.metadata import version as v; print('ray', v('ray'), 'py-spy', v('py-spy'))"
    try:
        done = subprocess.run([peer_python(), "-c", code], check=False, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return "bench venv missing"
    return done.stdout.strip() or "bench venv incomplete"


def naive_server(tmp: Path, name: str, model_dir: Path, workers: int, worker_class: str = "sync",
                 threads: int = 8, python: str | None = None) -> HttpServer:
    """bench/naive_app.py under Gunicorn `sync` or `gthread` (`threads` per worker) workers."""
    port = free_port()
    env = _base_env(tmp)
    env["BENCH_MODEL_DIR"] = str(model_dir)
    argv = [python or peer_python(), "-m", "gunicorn", "-k", worker_class, "-w", str(workers),
            "-b", f"127.0.0.1:{port}", "--timeout", "120"]
    if worker_class == "gthread":
        argv += ["--threads", str(threads)]
    return HttpServer(name, [*argv, "bench.naive_app:app"], env, tmp / f"{name}-{port}.log", port)


class RayServer(HttpServer):
    """bench/ray_app.py: Ray Serve (one replica, @serve.batch) behind its HTTP proxy.

    Ray's actors run in process groups of their own: `stop()` lets the app shut Ray down on
    SIGTERM, then kills whatever of the tree it started is still there.
    """

    def __init__(self, tmp: Path, name: str, model_dir: Path, python: str | None = None) -> None:
        port = free_port()
        env = _base_env(tmp)
        env.update(RAY_USAGE_STATS_ENABLED="0", RAY_DEDUP_LOGS="0")
        argv = [python or peer_python(), "-m", "bench.ray_app", "--model-dir", str(model_dir),
                "--port", str(port), "--temp-dir", str(tmp / "ray")]
        super().__init__(name, argv, env, tmp / f"{name}-{port}.log", port)

    def wait_ready(self, timeout_s: float = 300.0, path: str = "/readyz", consecutive: int = 8) -> None:
        deadline = time.monotonic() + timeout_s
        while "RAY SERVE READY" not in self.log_tail(100_000):
            if not self.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not come up:\n{self.log_tail()}")
            time.sleep(0.5)
        super().wait_ready(max(deadline - time.monotonic(), 10.0), path, consecutive)

    def stop(self, timeout_s: float = 60.0) -> None:
        from bench.loadgen import _process_tree

        tree = {pid: _cmdline(pid) for pid in (_process_tree([self.pid]) if self.alive() else [])}
        super().stop(timeout_s)
        for pid, cmdline in tree.items():
            if cmdline and _cmdline(pid) == cmdline:  # still the process we started, not a reused pid
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class StandIn(Process):
    """tests/tfserving_standin.py: TF Serving's gRPC API over the same SavedModel."""

    def __init__(self, tmp: Path, repository: Path) -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", "tests.tfserving_standin", "--port", str(self.port),
                "--model-repository", str(repository)]
        super().__init__("tfserving-standin", argv, _base_env(tmp), tmp / f"standin-{self.port}.log")
        self.target = f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"stand-in exited early:\n{self.log_tail()}")
            if "TF Serving stand-in on" in self.log_tail(100_000):
                return
            time.sleep(0.25)
        raise TimeoutError(f"stand-in not up after {timeout_s} s:\n{self.log_tail()}")
