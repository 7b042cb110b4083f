"""Schemathesis over /openapi.json against real Gunicorn: at least N generated cases, 0 5xx.

    python -m fuzz.api --cases 2000          # part of `make fuzz`

The count of cases and of 5xx answers (503 load shedding aside) is read from the service's own
access log (one JSON line per request), not from the fuzzer's summary, so neither can be
miscounted by the other.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.servers import service_server

# Operations in the document (GET and POST of every route), for cases per operation.
_OPERATIONS_ESTIMATE = 25


def _count_requests(log: Path) -> tuple[int, int, dict[str, int]]:
    total, server_errors, by_status = 0, 0, {}
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("logger") != "service.access" or entry.get("route") == "/openapi.json":
            continue
        total += 1
        status = str(entry.get("status"))
        by_status[status] = by_status.get(status, 0) + 1
        # 503 is load shedding with Retry-After (the fuzzer outruns one worker), not a failure.
        server_errors += int(status) >= 500 and int(status) != 503
    return total, server_errors, by_status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000, help="generated requests to reach at least")
    parser.add_argument("--max-time-s", type=int, default=900)
    args = parser.parse_args(argv)
    from tests.models import export_tiny_model

    with tempfile.TemporaryDirectory(prefix="fuzz-api-") as tmp_name:
        tmp = Path(tmp_name)
        export_tiny_model(tmp / "repo", "tiny", 1)
        server = service_server(tmp, "fuzz-api", {"model_repository": tmp / "repo", "model_name": "tiny",
                                                   "max_batch_size": 4, "threads": 8, "repository_poll_interval_s": 0})
        server.start()
        started = time.monotonic()
        try:
            server.wait_ready()
            executable = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
            per_operation = math.ceil(args.cases / _OPERATIONS_ESTIMATE * 1.2)
            fuzzer = subprocess.run(
                [executable, "run", f"{server.url}/openapi.json",
                 "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance",
                 "--max-examples", str(per_operation), "--phases", "examples,coverage,fuzzing",
                 "--request-timeout", "30", "--max-time", str(args.max_time_s), "--report-dir", str(tmp)],
                check=False, capture_output=True, text=True, cwd=tmp, timeout=args.max_time_s + 300,
            )
            alive = requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
        finally:
            server.stop()
        cases, server_errors, by_status = _count_requests(server.log_path)
    elapsed = time.monotonic() - started
    ok = fuzzer.returncode == 0 and server_errors == 0 and cases >= args.cases and alive
    print("| campaign | cases | 5xx | schema/status violations | statuses | time | result |")
    print("|---|---:|---:|---|---|---:|---|")
    print(f"| schemathesis over /openapi.json | {cases} | {server_errors} | "
          f"{'none' if fuzzer.returncode == 0 else 'see output'} | {json.dumps(by_status, sort_keys=True)} | "
          f"{elapsed:.0f} s | {'PASS' if ok else 'FAIL'} |")
    if fuzzer.returncode != 0:
        print(fuzzer.stdout[-8000:])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
