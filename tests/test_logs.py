"""The JSON log helpers without a server: fd 2 lines made JSON, per-logger levels for Gunicorn."""

from __future__ import annotations

import json
import subprocess
import sys

from service.logs import as_json_line, gunicorn_logconfig
from tests.conftest import REPO_ROOT


def test_native_lines_are_wrapped_and_json_lines_pass_unchanged() -> None:
    own = b'{"ts": "2026-01-01T00:00:00.000Z", "level": "info", "logger": "service.access", "message": "request"}'
    assert as_json_line(own + b"\n") == own + b"\n"
    absl = b"I0000 00:00:1796090257.483312    1359 port.cc:153] oneDNN custom operations are on.\n"
    wrapped = json.loads(as_json_line(absl))
    assert wrapped["logger"] == "stderr" and wrapped["level"] == "info" and wrapped["message"] == absl.decode().strip()
    assert json.loads(as_json_line(b"E0101 12:00:00.0 1 x.cc:1] failed\n"))["level"] == "error"
    assert json.loads(as_json_line(b"WARNING: All log messages before absl::InitializeLog()\n"))["level"] == "warning"
    # Looks like JSON but is not an object, or not JSON at all: wrapped, never passed through.
    assert json.loads(as_json_line(b"{not json\n"))["message"] == "{not json"
    assert json.loads(as_json_line("Segmentation fault \u00e9\n".encode("latin-1")))["level"] == "error"


def test_log_levels_apply_to_gunicorns_loggers() -> None:
    config = gunicorn_logconfig("INFO", "gunicorn.error=WARNING, service.batching=DEBUG")
    assert config["loggers"]["gunicorn.error"]["level"] == "WARNING"
    assert config["loggers"]["gunicorn.error"]["handlers"] == ["stderr"]
    assert config["loggers"]["service.batching"] == {"level": "DEBUG"}


def test_what_a_process_writes_to_fd_2_before_it_aborts_still_comes_out_as_json() -> None:
    # The reader is a process of its own: a worker that dies natively (here abort()) still has
    # its last lines, e.g. faulthandler's dump, written out.
    code = ("import os, faulthandler; from service.logs import NativeStderr; NativeStderr(); "
            "os.write(2, b'F0101 00:00:00.0 1 x.cc:1] Check failed: plain C++ text\\n'); "
            "faulthandler.enable(); os.abort()")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, timeout=60, check=False)
    assert done.returncode != 0
    lines = [json.loads(line) for line in done.stderr.decode().splitlines() if line.strip()]
    assert lines[0]["level"] == "critical" and "Check failed" in lines[0]["message"]
    assert any("Fatal Python error: Aborted" in line["message"] for line in lines)
    assert all(line["logger"] == "stderr" for line in lines)
