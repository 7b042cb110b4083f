"""`cpe-client`: run a plate folder through the server, summarise results, compute titres."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cpe_client.results import read_rows, write_csv
from cpe_client.runner import DEFAULT_CONCURRENCY

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cpe-client", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    plate = commands.add_parser("plate", help="classify every image of a plate folder (resumable)")
    plate.add_argument("directory", type=Path)
    plate.add_argument("--url", default=os.environ.get("CPE_URL"), help="server URL (env CPE_URL)")
    plate.add_argument("--api-key", default=os.environ.get("CPE_API_KEY"), help="bearer token (env CPE_API_KEY)")
    plate.add_argument("--out", type=Path, default=Path("results.csv"), help="per-image CSV (appended; resume key)")
    plate.add_argument("--layout", default="auto", choices=["auto", "imagexpress", "operetta", "incucyte"])
    plate.add_argument("--pattern", help="regex with named groups plate, well, site, channel, time_point, "
                                         "searched in each path relative to DIRECTORY")
    plate.add_argument("--file-map", type=Path, help="CSV: file, plate, well, site, channel, time_point")
    plate.add_argument("--plate", help="plate name where file names carry none (Operetta: folder name)")
    plate.add_argument("--channel", help="the phase-contrast channel (e.g. 1, w1, ch1)")
    plate.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="requests in flight")
    plate.add_argument("--images-per-request", type=int, help="cap below the server's limit")
    plate.add_argument("--max-images", type=int, help="stop after this many new images (resume later)")
    plate.add_argument("--timeout-s", type=float, default=120.0, help="per request")
    plate.add_argument("--quiet", action="store_true", help="no progress bar")
    plate.add_argument("--no-plots", action="store_true", help="summary CSVs only")

    summarize = commands.add_parser("summarize", help="well/plate summaries and plots from a per-image CSV")
    summarize.add_argument("results", type=Path)
    summarize.add_argument("--no-plots", action="store_true")

    titre = commands.add_parser("titre", help="TCID50/ml by Reed–Muench and Spearman–Kärber")
    titre.add_argument("results", type=Path, help="per-image CSV of the titration plate")
    titre.add_argument("--plate-map", type=Path, required=True, help="CSV: well, dilution[, sample][, plate]")
    titre.add_argument("--inoculum-ml", type=float, default=0.1, help="volume inoculated per well (ml)")
    titre.add_argument("--time-point", help="time point to read (default: the last one)")
    return parser


def _records(args: argparse.Namespace) -> list:  # type: ignore[type-arg]
    from cpe_client import layouts

    if args.file_map:
        records = layouts.from_file_map(args.directory, args.file_map)
    elif args.pattern:
        records = layouts.from_pattern(args.directory, args.pattern, args.plate)
    else:
        records = layouts.from_layout(args.directory, args.layout, args.plate)
    return layouts.pick_channel(records, args.channel)


def _plate(args: argparse.Namespace) -> int:
    from cpe_client.client import Client
    from cpe_client.summary import write_summaries

    if not args.url:
        raise ValueError("--url (or CPE_URL) is required")
    records = _records(args)
    with Client(args.url, api_key=args.api_key, timeout_s=args.timeout_s) as client:
        summary = client.run_plate(
            args.directory, args.out, records=records, concurrency=args.concurrency,
            max_images=args.max_images, images_per_request=args.images_per_request, quiet=args.quiet,
        )
    written = write_summaries(args.out, read_rows(args.out), plots=not args.no_plots)
    print(summary.describe(), file=sys.stderr)
    if not args.quiet:
        print("wrote " + ", ".join(str(p) for p in [args.out, *written]), file=sys.stderr)
    if not summary.ok:
        print(f"failed images are listed in {args.out.with_name(args.out.stem + '.failures.csv')}; "
              "run the same command again to retry them", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _summarize(args: argparse.Namespace) -> int:
    from cpe_client.summary import write_summaries

    rows = read_rows(args.results)
    if not rows:
        raise ValueError(f"{args.results} has no result rows")
    for path in write_summaries(args.results, rows, plots=not args.no_plots):
        print(path)
    return 0


def _titre(args: argparse.Namespace) -> int:
    from cpe_client.summary import output_path, summarize_wells
    from cpe_client.titre import read_plate_map, titrate

    wells = summarize_wells(read_rows(args.results))
    last: dict[str, str] = {}
    for well in wells:  # default time point: each plate's last
        tp = well["Metadata_TimePoint"]
        if well["Metadata_Plate"] not in last or int(tp or 0) > int(last[well["Metadata_Plate"]] or 0):
            last[well["Metadata_Plate"]] = tp
    calls = {(w["Metadata_Plate"], w["Metadata_Well"]): w["call"] for w in wells
             if w["Metadata_TimePoint"] == (args.time_point if args.time_point is not None else last[w["Metadata_Plate"]])}
    titres, series = titrate(read_plate_map(args.plate_map), calls, args.inoculum_ml)
    rows = []
    for titre in titres:
        rows.append({"sample": titre.sample, "method": titre.method,
                     "log10_endpoint_dilution": round(-titre.log10_endpoint, 4),
                     "log10_tcid50_per_ml": round(titre.log10_tcid50_per_ml, 4),
                     "tcid50_per_ml": f"{titre.tcid50_per_ml:.4g}", "inoculum_ml": args.inoculum_ml,
                     "dilutions": " ".join(f"1e-{d.x:g}:{d.infected}/{d.wells}" for d in series[titre.sample]),
                     "warnings": "; ".join(titre.warnings)})
        value = "n/a" if math.isnan(titre.log10_tcid50_per_ml) else \
            f"{titre.tcid50_per_ml:.3g} TCID50/ml (log10 {titre.log10_tcid50_per_ml:.2f})"
        print(f"{titre.sample}\t{titre.method}\t{value}" + (f"\t[{'; '.join(titre.warnings)}]" if titre.warnings else ""))
    out = output_path(args.results, "titre.csv")
    write_csv(out, list(rows[0]) if rows else ["sample"], rows)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `cpe-client` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    handler = {"plate": _plate, "summarize": _summarize, "titre": _titre}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted: answered images are saved; run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, FileNotFoundError) as err:
        print(f"cpe-client: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
