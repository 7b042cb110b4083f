"""Per-well and per-plate summaries of the per-image CSV, and the well call rule.

Well call (documented in the README): a well is **infected** if at least half of its sites
are called infected by the model, or if any one site has p_infected >= 0.9 (one clear focus
of CPE is enough in a titration well); otherwise **uninfected**. A well is **flagged** for a
look by eye if any site was QC-flagged by the server or more than half of its sites are low
confidence (0.2 < p_infected < 0.8).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cpe_client.results import write_csv
from cpe_client.wells import normalize_well, well_position

ANY_SITE_P = 0.9
LOW_CONFIDENCE = (0.2, 0.8)
QC_OK = frozenset({"", "ok", "pass", "passed"})

WELL_COLUMNS = (
    "Metadata_Plate", "Metadata_TimePoint", "Metadata_Well", "sites", "sites_positive",
    "mean_p_infected", "median_p_infected", "max_p_infected", "low_confidence_sites",
    "qc_flagged_sites", "call", "flagged",
)
PLATE_COLUMNS = (
    "Metadata_Plate", "Metadata_TimePoint", "wells", "wells_infected", "infected_fraction",
    "wells_flagged", "sites", "sites_positive", "mean_p_infected", "low_confidence_sites",
    "qc_flagged_sites",
)


def site_positive(row: dict[str, str]) -> bool:
    """The model's label, or p >= 0.5 where a row has no label."""
    if row.get("label"):
        return row["label"] == "infected"
    return float(row.get("p_infected") or 0) >= 0.5


def well_call(positive: int, sites: int, max_p: float) -> str:
    """'infected' if at least half the sites are positive or any site has p >= 0.9."""
    return "infected" if sites and (2 * positive >= sites or max_p >= ANY_SITE_P) else "uninfected"


def _well_order(key: tuple[str, str, str]) -> tuple[str, int, tuple[int, int]]:
    plate, time_point, well = key
    return plate, int(time_point) if time_point else 0, well_position(well)


def summarize_wells(rows: Iterable[dict[str, str]]) -> list[dict[str, Any]]:
    """One row per (plate, time point, well), in plate, time and well order."""
    groups: dict[tuple[str, str, str], list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        if row.get("Metadata_Well") and row.get("p_infected"):
            well = normalize_well(row["Metadata_Well"])  # hand-edited CSVs may say B7
            groups[(row.get("Metadata_Plate") or "", row.get("Metadata_TimePoint") or "", well)].append(row)
    summary = []
    for key in sorted(groups, key=_well_order):
        sites = groups[key]
        ps = [float(r["p_infected"]) for r in sites]
        positive = sum(site_positive(r) for r in sites)
        low = sum(LOW_CONFIDENCE[0] < p < LOW_CONFIDENCE[1] for p in ps)
        qc = sum((r.get("qc_status") or "").lower() not in QC_OK for r in sites)
        summary.append({
            "Metadata_Plate": key[0], "Metadata_TimePoint": key[1], "Metadata_Well": key[2],
            "sites": len(sites), "sites_positive": positive,
            "mean_p_infected": round(statistics.fmean(ps), 6), "median_p_infected": round(statistics.median(ps), 6),
            "max_p_infected": round(max(ps), 6), "low_confidence_sites": low, "qc_flagged_sites": qc,
            "call": well_call(positive, len(sites), max(ps)),
            "flagged": int(qc > 0 or 2 * low > len(sites)),
        })
    return summary


def summarize_plates(wells: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (plate, time point) from the well summary."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for well in wells:
        groups[(well["Metadata_Plate"], well["Metadata_TimePoint"])].append(well)
    rows = []
    for (plate, time_point), group in sorted(groups.items(), key=lambda kv: (kv[0][0], int(kv[0][1] or 0))):
        infected = sum(w["call"] == "infected" for w in group)
        sites = sum(w["sites"] for w in group)
        rows.append({
            "Metadata_Plate": plate, "Metadata_TimePoint": time_point, "wells": len(group),
            "wells_infected": infected, "infected_fraction": round(infected / len(group), 6),
            "wells_flagged": sum(w["flagged"] for w in group), "sites": sites,
            "sites_positive": sum(w["sites_positive"] for w in group),
            "mean_p_infected": round(sum(w["mean_p_infected"] * w["sites"] for w in group) / sites, 6),
            "low_confidence_sites": sum(w["low_confidence_sites"] for w in group),
            "qc_flagged_sites": sum(w["qc_flagged_sites"] for w in group),
        })
    return rows


def output_path(results: Path, suffix: str) -> Path:
    """`results.csv` -> `results.<suffix>` beside it."""
    return results.with_name(f"{results.stem}.{suffix}")


def write_summaries(results: Path, rows: list[dict[str, str]], plots: bool = True) -> list[Path]:
    """Well and plate CSVs (and PNGs) beside the per-image CSV; returns the paths written."""
    wells = summarize_wells(rows)
    plates = summarize_plates(wells)
    written = [output_path(results, "wells.csv"), output_path(results, "plates.csv")]
    write_csv(written[0], WELL_COLUMNS, wells)
    write_csv(written[1], PLATE_COLUMNS, plates)
    if plots and wells:
        from cpe_client.plots import plot_heatmaps, plot_time_course

        written += plot_heatmaps(wells, results)
        if len({w["Metadata_TimePoint"] for w in wells}) > 1:
            written.append(plot_time_course(plates, output_path(results, "timecourse.png")))
    return written
