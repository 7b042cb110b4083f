"""Well and plate summaries, the well call rule, and `cpe-client summarize`."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from cpe_client.cli import main
from cpe_client.results import COLUMNS, write_csv
from cpe_client.summary import summarize_plates, summarize_wells, well_call


def _row(well: str, p: float, time_point: str = "", qc: str = "", plate: str = "P1") -> dict[str, str]:
    return {"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_TimePoint": time_point, "p_infected": str(p),
            "label": "infected" if p >= 0.5 else "uninfected", "qc_status": qc, "input_sha256": f"{hash((well, p, time_point)) & (2**64 - 1):064x}"}


def test_well_call_rule() -> None:
    assert well_call(positive=2, sites=4, max_p=0.6) == "infected"    # half the sites
    assert well_call(positive=1, sites=4, max_p=0.6) == "uninfected"
    assert well_call(positive=1, sites=4, max_p=0.95) == "infected"   # one clear site
    assert well_call(positive=0, sites=0, max_p=0.0) == "uninfected"


def test_well_and_plate_summaries() -> None:
    rows = [_row("A1", 0.95), _row("A01", 0.1), _row("A01", 0.05), _row("A01", 0.3),   # one clear site
            _row("b2", 0.6), _row("B02", 0.7, qc="blurred"),                              # half low-confidence, QC flag
            _row("C3", 0.1), _row("C03", 0.2),
            {**_row("C3", 0.1), "p_infected": ""}]                                         # unanswered: ignored
    wells = summarize_wells(rows)
    by_well = {w["Metadata_Well"]: w for w in wells}
    assert list(by_well) == ["A01", "B02", "C03"]
    a = by_well["A01"]
    assert (a["sites"], a["sites_positive"], a["call"], a["low_confidence_sites"], a["flagged"]) == (4, 1, "infected", 1, 0)
    assert a["mean_p_infected"] == pytest.approx(0.35) and a["median_p_infected"] == pytest.approx(0.2)
    assert a["max_p_infected"] == 0.95
    b = by_well["B02"]
    assert (b["call"], b["low_confidence_sites"], b["qc_flagged_sites"], b["flagged"]) == ("infected", 2, 1, 1)
    assert by_well["C03"]["call"] == "uninfected" and by_well["C03"]["low_confidence_sites"] == 0
    [plate] = summarize_plates(wells)
    assert (plate["wells"], plate["wells_infected"], plate["wells_flagged"], plate["sites"]) == (3, 2, 1, 8)
    assert plate["infected_fraction"] == pytest.approx(2 / 3)
    assert plate["mean_p_infected"] == pytest.approx((0.95 + 0.1 + 0.05 + 0.3 + 0.6 + 0.7 + 0.1 + 0.2) / 8)


def test_time_points_are_summarised_separately() -> None:
    rows = [_row("A1", 0.1, "1"), _row("A1", 0.9, "2"), _row("A2", 0.2, "1"), _row("A2", 0.3, "2"), _row("A1", 0.9, "10")]
    plates = summarize_plates(summarize_wells(rows))
    assert [(p["Metadata_TimePoint"], p["infected_fraction"]) for p in plates] == [("1", 0.0), ("2", 0.5), ("10", 1.0)]


def test_summarize_command_writes_csvs_and_pictures(tmp_path: Path) -> None:
    rows = [_row(f"{r}{c}", (c / 12) * (0.5 if r in "AB" else 1), t, qc="blurred" if (r, c) == ("C", 3) else "")
            for t in ("1", "2") for r in "ABCDEFGH" for c in range(1, 13)]
    results = tmp_path / "results.csv"
    write_csv(results, COLUMNS, rows)
    assert main(["summarize", str(results)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["results.csv", "results.heatmap.P1.t1.png", "results.heatmap.P1.t2.png",
                     "results.plates.csv", "results.timecourse.png", "results.wells.csv"]
    assert (tmp_path / "results.heatmap.P1.t1.png").read_bytes().startswith(b"\x89PNG")
    wells = list(csv.DictReader((tmp_path / "results.wells.csv").open()))
    assert len(wells) == 192 and wells[0]["Metadata_Well"] == "A01" and wells[12]["Metadata_Well"] == "B01"
    assert main(["summarize", str(tmp_path / "missing.csv")]) == 2
