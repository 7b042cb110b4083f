"""A bounded slice of `make harden` (bench/harden.py): SIGTERM under load, stalled uploads beside
normal traffic, hostile files — real Gunicorn with the committed model, `--quick` durations
(about 90 s on an idle 2-core machine), the same code paths as the full campaign.

Each row's verdict is asserted: SIGTERM (the worker closes its listener when it drains),
stalled uploads (the worker's event loop reads requests whole before they get a thread) and
hostile files (the hardened decoders); and the parts of each row that must hold on any machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ROWS = ("sigterm", "stalled", "hostile")


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("harden") / "harden"
    done = subprocess.run(
        [sys.executable, "-m", "bench.harden", "--quick", "--only", ",".join(ROWS), "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode in (0, 1), done.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    return {"stdout": done.stdout, "returncode": done.returncode,
            "rows": {row["key"]: row for row in report["rows"]}, "stderr": done.stderr}


def test_one_table_row_per_check(campaign: dict[str, Any]) -> None:
    lines = [line for line in campaign["stdout"].splitlines() if line.startswith("| ")]
    assert lines[0] == "| check | what was measured | limit | result |"
    assert len(lines) == 1 + len(ROWS)
    assert all(line.rstrip().endswith(("| PASS |", "| **FAIL** |")) for line in lines[1:])
    failed = any(not row["pass"] for row in campaign["rows"].values())
    assert campaign["returncode"] == (1 if failed else 0)


def test_sigterm_parts_that_hold(campaign: dict[str, Any]) -> None:
    detail = campaign["rows"]["sigterm"]["detail"]
    assert "error" not in detail, detail
    assert detail["exit_code"] == 0
    assert set(detail["statuses"]) <= {"200"}  # every request that got a status got 200
    # Requests on connections opened before the SIGTERM are all answered (drained).
    assert detail["lost"] == detail["lost_connected_after_signal"]


def test_stalled_parts_that_hold(campaign: dict[str, Any]) -> None:
    detail = campaign["rows"]["stalled"]["detail"]
    assert "error" not in detail, detail
    for result in detail["stalled_results"]:
        assert result["status"] == 408
        assert result["answered_after_s"] is not None and result["answered_after_s"] <= detail["read_timeout_s"] + 2
    assert not detail["loaded_errors"]  # normal traffic is slow beside them, but answered 200


def test_hostile_parts_that_hold(campaign: dict[str, Any]) -> None:
    detail = campaign["rows"]["hostile"]["detail"]
    assert "error" not in detail, detail
    for result in detail["files"]:
        assert result["status"] and result["status"] < 500, result  # never a 5xx or a dropped connection
        assert result["seconds"] <= 1.0, result
    assert detail["workers_before"] == detail["workers_after"]
    assert detail["rss_growth_mb"] <= 512


@pytest.mark.parametrize("key", ROWS)
def test_row_passes(campaign: dict[str, Any], key: str) -> None:
    row = campaign["rows"][key]
    assert row["pass"], row["measured"]
