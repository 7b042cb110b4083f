"""Start real servers for integration tests: Gunicorn on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]


def wait_for_http_ok(url: str, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `url` until it answers 200; fail fast if `process` (the server) exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited early (code {process.returncode})")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass  # not listening yet, or busy warming up on a loaded machine
        time.sleep(0.2)
    raise TimeoutError(f"{url} not 200 after {timeout_s} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GunicornServer:
    """`gunicorn -c python:service.gunicorn_conf` with SERVING_* settings, on 127.0.0.1."""

    def __init__(self, tmp_dir: Path, ready_timeout_s: float = 120.0, **settings: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_dir / f"gunicorn-{self.port}.log"
        self.metrics_dir = tmp_dir / f"metrics-{self.port}"
        self._ready_timeout_s = ready_timeout_s
        self.env = {
            **os.environ,
            "SERVING_HOST": "127.0.0.1",
            "PORT": str(self.port),
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            **{f"SERVING_{key.upper()}": str(value) for key, value in settings.items()},
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True) -> GunicornServer:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:service.gunicorn_conf",
             "service.app:create_app()"],
            cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        self._wait_for("/readyz" if wait_ready else "/healthz")
        return self

    def wait_ready(self) -> None:
        """Until /readyz says 200 (model loaded and warmed up)."""
        self._wait_for("/readyz")

    def _wait_for(self, path: str) -> None:
        try:
            wait_for_http_ok(f"{self.url}{path}", self._ready_timeout_s, self.process)
        except RuntimeError as err:
            raise RuntimeError(f"{err}:\n{self.log()}") from err
        except TimeoutError as err:
            raise TimeoutError(f"gunicorn: {err}:\n{self.log()[-3000:]}") from err

    def worker_pids(self) -> list[int]:
        """The arbiter's worker processes (children), read from /proc."""
        assert self.process is not None
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # exited while we looked
            if int(fields[1]) == self.process.pid:
                pids.append(int(stat.parent.name))
        return pids

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (graceful) and wait; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def __enter__(self) -> GunicornServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if self.process is not None and self.process.poll() is None:
            self.terminate()


@contextmanager
def tiny_model_server(tmp_dir: Path, env: dict[str, str | None] | None = None,
                      **settings: object) -> Iterator[GunicornServer]:
    """Gunicorn serving a freshly exported tiny CNN (model "tiny", version 1), ready; `env`
    sets (or, with None, removes) other environment variables of the server."""
    from tests.models import export_tiny_model  # TensorFlow: only for the tests that serve it

    export_tiny_model(tmp_dir / "repository", "tiny", 1)
    server = GunicornServer(tmp_dir, model_repository=tmp_dir / "repository", model_name="tiny", **settings)
    for name, value in (env or {}).items():
        if value is None:
            server.env.pop(name, None)
        else:
            server.env[name] = value
    with server as running:
        yield running
