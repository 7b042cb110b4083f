"""`make harden`: does the service hold under overload, signals, stalled clients, hostile files and
a soak? Real Gunicorn on 127.0.0.1 free ports; every loop is bounded. One Markdown table (check |
measured | limit | PASS/FAIL) on stdout, written with a JSON twin to bench/results/harden.{md,json}.

    python -m bench.harden                        # full campaign, ~18 min
    python -m bench.harden --quick --only sigterm,stalled,hostile
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import git_commit, log, machine_info
from bench.harden_rows import ROWS, Campaign, row
from bench.servers import REPO_ROOT


def render(rows: list[dict[str, Any]], header: str) -> str:
    lines = [header, "", "| check | what was measured | limit | result |", "|---|---|---|---|"]
    for entry in rows:
        cells = [entry["check"], entry["measured"], entry["limit"], "PASS" if entry["pass"] else "**FAIL**"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--soak-s", type=float, default=600.0)
    parser.add_argument("--overload-s", type=float, default=60.0)
    parser.add_argument("--only", default=",".join(ROWS), help=f"comma-separated rows of {','.join(ROWS)}")
    parser.add_argument("--quick", action="store_true", help="short durations (the test slice), same code paths")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "harden")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--report-only", action="store_true", help="exit 0 even when a row fails")
    parser.add_argument("--note", default="", help="a line for the report (e.g. the machine was shared)")
    args = parser.parse_args(argv)
    only = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = set(only) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; rows: {ROWS}")
    started = time.time()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="harden-") as tmp_name:
        campaign = Campaign(args, Path(tmp_name))
        for key in [r for r in ROWS if r in only]:
            run: Callable[[], dict[str, Any]] = getattr(campaign, key)
            try:
                rows.append(run())
            except Exception as err:  # noqa: BLE001 - a crashed row is a FAIL with its reason
                log(f"{key}: crashed: {err!r}")
                rows.append(row(key, key, f"did not complete: {type(err).__name__}: {str(err)[-300:]}",
                                 "completes", False, {"error": repr(err)[-3000:]}))
    info = machine_info()
    header = (f"# make harden — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}\n\n"
              f"Service commit {git_commit()}; {info['cpus']} CPUs ({info['cpu_model']}); rows {','.join(only)}"
              f"{' (--quick)' if args.quick else ''}; wall {(time.time() - started) / 60:.1f} min. Model: committed "
              f"cpe_cnn (private copy), 64x64 16-bit TIFF bodies (resized to 1360x1024 in the model: same model "
              f"cost, cheap load generator). Load: bench/harden_load.py (own process, asyncio, open loop = Poisson)."
              + (f"\n\n{args.note}" if args.note else ""))
    table = render(rows, header)
    print(table)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(table)
        args.out.with_suffix(".json").write_text(json.dumps(
            {"started": started, "commit": git_commit(), "machine": info, "quick": args.quick, "note": args.note,
             "rows": rows}, indent=1, default=str))
    return 0 if args.report_only or all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # servers are stopped by the finally blocks
    sys.exit(main())

