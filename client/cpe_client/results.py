"""The per-image CSV: CellProfiler-style columns, appended batch by batch, read back for resume."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

COLUMNS = (
    "Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Channel", "Metadata_TimePoint",
    "FileName_Phase", "PathName_Phase", "p_infected", "label", "qc_status", "model_name",
    "model_version", "preprocessing_hash", "input_sha256", "request_id",
)
FAILURE_COLUMNS = ("FileName_Phase", "PathName_Phase", "input_sha256", "status", "code", "message")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def read_rows(path: Path) -> list[dict[str, str]]:
    """Complete rows of a per-image CSV; a row torn by a crash (no valid hash) is skipped."""
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return [row for row in csv.DictReader(handle) if _SHA256.fullmatch(row.get("input_sha256") or "")]


def answered_hashes(path: Path) -> set[str]:
    """SHA-256 of every image already answered in `path`: these are not sent again."""
    return {row["input_sha256"] for row in read_rows(path)}


class ResultWriter:
    """Appends rows to the per-image CSV, flushed after every batch so a crash loses nothing answered."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists() or path.stat().st_size == 0
        torn = False
        if not fresh:
            with path.open("rb") as tail:
                tail.seek(-1, 2)
                torn = tail.read(1) != b"\n"
        self._handle: IO[str] = path.open("a", newline="")
        if torn:  # the last run died mid-row: start ours on a line of its own
            self._handle.write("\n")
        self._writer = csv.DictWriter(self._handle, fieldnames=COLUMNS, extrasaction="ignore")
        if fresh:
            self._writer.writeheader()
        self._handle.flush()

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        self._writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def write_csv(path: Path, columns: Iterable[str], rows: Iterable[dict[str, Any]]) -> None:
    """Write a whole CSV (summaries, failures)."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)

