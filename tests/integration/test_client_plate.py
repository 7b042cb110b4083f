"""`cpe-client plate` end to end against the real service under Gunicorn, over HTTP.

One server for the module, with a queue of 8 images, batches of 8 and at most 8 images per
request, so concurrent clients are refused (503 + Retry-After) all the time: every test here
also exercises the retries. Images are small 16-bit TIFFs (the service resizes them), so the
committed model costs ~40 ms each. What the server answered is read from its JSON access log.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.client.conftest import CLIENT_SOURCE
from tests.client.plates import wells_of, write_plate
from tests.integration.servers import GunicornServer

COLUMNS = ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Channel", "Metadata_TimePoint",
           "FileName_Phase", "PathName_Phase", "p_infected", "label", "qc_status", "model_name",
           "model_version", "preprocessing_hash", "input_sha256", "request_id"]
WELLS = wells_of("ABC", range(1, 5))  # 12 wells


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    with GunicornServer(tmp_path_factory.mktemp("client-gunicorn"), max_queue_size=8, max_batch_size=8,
                        max_images_per_request=8, threads=16) as running:
        yield running


def _cli(*args: str, **popen: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(CLIENT_SOURCE)}
    return subprocess.Popen([sys.executable, "-m", "cpe_client", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)  # type: ignore[call-overload]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    process = _cli(*args)
    stdout, stderr = process.communicate(timeout=240)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _rows(path: Path) -> list[dict[str, str]]:
    """Complete rows of a per-image CSV (a Ctrl-C can tear the row being written; it is resent)."""
    return [row for row in _csv(path) if len(row.get("request_id") or "") == 32]


def _predict_log(server: GunicornServer, since: int = 0) -> list[dict[str, Any]]:
    """/predict access-log records from line `since` on."""
    lines = server.log().splitlines()[since:]
    records = [json.loads(line) for line in lines if line.startswith("{") and '"route": "/predict"' in line]
    return [r for r in records if r.get("logger") == "service.access"]


@pytest.mark.parametrize("layout", ["imagexpress", "operetta", "incucyte"])
def test_plate_in_each_layout(server: GunicornServer, tmp_path: Path, layout: str) -> None:
    root = tmp_path / "P001"
    channels = 2 if layout == "imagexpress" else 1  # a second (fluorescence) channel is left out
    write_plate(root, layout, WELLS, sites=2, time_points=2, channels=channels)
    out = tmp_path / "results.csv"
    args = ["plate", str(root), "--url", server.url, "--out", str(out), "--layout", layout]
    result = _run(*args, *(["--channel", "w1"] if channels == 2 else []))
    assert result.returncode == 0, result.stderr
    assert "48 answered now" in result.stderr
    rows = _rows(out)
    assert list(rows[0]) == COLUMNS and len(rows) == 48
    assert {r["Metadata_Well"] for r in rows} == set(WELLS)
    assert {(r["Metadata_Plate"], r["Metadata_Site"], r["Metadata_Channel"], r["Metadata_TimePoint"]) for r in rows} \
        == {("P001", s, "" if layout == "incucyte" else "1", t) for s in "12" for t in "12"}  # Incucyte: no channel
    assert all(0 <= float(r["p_infected"]) <= 1 and r["label"] in {"infected", "uninfected"} for r in rows)
    assert {r["model_name"] for r in rows} == {"cpe_cnn"} and len({r["input_sha256"] for r in rows}) == 48
    assert all(r["PathName_Phase"] == str(Path(tmp_path / r["PathName_Phase"]).resolve()) for r in rows)
    wells = _csv(tmp_path / "results.wells.csv")
    assert len(wells) == 24 and {w["sites"] for w in wells} == {"2"}
    assert len(_csv(tmp_path / "results.plates.csv")) == 2
    for name in ("results.heatmap.P001.t1.png", "results.heatmap.P001.t2.png", "results.timecourse.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_interrupted_run_resumes_and_sends_only_the_rest(server: GunicornServer, tmp_path: Path) -> None:
    root = tmp_path / "P002"
    write_plate(root, "imagexpress", WELLS, sites=2, time_points=2, plate="P002")
    out = tmp_path / "results.csv"
    args = ["plate", str(root), "--url", server.url, "--out", str(out), "--quiet", "--concurrency", "1",
            "--images-per-request", "4"]
    process = _cli(*args)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and (not out.exists() or len(_rows(out)) < 24):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # Ctrl-C halfway
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "resume" in stderr
    done = len(_rows(out))
    assert 24 <= done < 48
    log_mark = len(server.log().splitlines())
    result = _run(*args)
    assert result.returncode == 0, result.stderr
    assert f"{done} already answered, {48 - done} answered now" in result.stderr
    answered = [r for r in _predict_log(server, log_mark) if r["status"] == 200]
    assert sum(int(r["images"]) for r in answered) == 48 - done  # only the rest was sent
    rows = _rows(out)
    assert len(rows) == 48 and len({r["input_sha256"] for r in rows}) == 48


def test_503_storm_every_image_answered_exactly_once(server: GunicornServer, tmp_path: Path) -> None:
    root = tmp_path / "P003"
    write_plate(root, "operetta", wells_of("ABCDEF", range(1, 9)), sites=2, time_points=1, seed=1000)
    out = tmp_path / "results.csv"
    log_mark = len(server.log().splitlines())
    result = _run("plate", str(root), "--url", server.url, "--out", str(out), "--concurrency", "8",
                  "--images-per-request", "4", "--no-plots")
    assert result.returncode == 0, result.stderr
    log = _predict_log(server, log_mark)
    refused = [r for r in log if r["status"] == 503]
    answered = [r for r in log if r["status"] == 200]
    assert refused and {r["error_code"] for r in refused} == {"queue_full"}, "no 503 storm happened"
    assert sum(int(r["images"]) for r in answered) == 96  # nothing answered twice
    rows = _rows(out)
    assert len(rows) == 96 and len({r["input_sha256"] for r in rows}) == 96
    assert {r["request_id"] for r in rows} == {r["request_id"] for r in answered}


def test_an_undecodable_file_fails_alone_and_the_exit_code_says_so(server: GunicornServer, tmp_path: Path) -> None:
    root = tmp_path / "P004"
    paths = write_plate(root, "imagexpress", ["D01", "D02", "D03"], sites=2, time_points=1, plate="P004", seed=2000)
    paths[3].write_bytes(b"this is not an image")
    out = tmp_path / "results.csv"
    result = _run("plate", str(root), "--url", server.url, "--out", str(out), "--no-plots")
    assert result.returncode == 1
    assert "1 FAILED (undecodable_image x1)" in result.stderr
    assert {r["FileName_Phase"] for r in _rows(out)} == {p.name for p in paths} - {paths[3].name}
    [failure] = _csv(tmp_path / "results.failures.csv")
    assert (failure["FileName_Phase"], failure["status"], failure["code"]) == (paths[3].name, "400", "undecodable_image")
