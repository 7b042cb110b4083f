"""TCID50 by Reed–Muench and Spearman–Kärber, checked against published worked examples (Lei et
al. 2021, below) and examples worked by hand.

Methods: Reed LJ, Muench H (1938) Am J Hyg 27:493-497; Spearman C (1908) Br J Psychol
2:227-242; Kärber G (1931) Arch Exp Pathol Pharmakol 162:480-483 — in the form taught in
virology lab manuals: log10 TCID50 = x0 - d/2 + d·Σ(r/n). The plate data below are laid out
as in those manuals' worked examples (tenfold series, 8 replicate wells); every number
asserted is worked by hand in the comments, not taken from the code under test.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from cpe_client.cli import main
from cpe_client.titre import Dilution, parse_dilution, reed_muench, spearman_karber, titrate, titre_per_ml

# 8 wells per dilution, 10^-1 .. 10^-6, wells showing CPE: 8, 8, 7, 5, 2, 0
EXAMPLE = [Dilution(x, r, 8) for x, r in zip(range(1, 7), (8, 8, 7, 5, 2, 0))]


def test_reed_muench_worked_example() -> None:
    # infected    8  8  7  5  2  0      uninfected  0  0  1  3  6  8
    # cumulative infected (summed from the most dilute up):    30 22 14  7  2  0
    # cumulative uninfected (summed from the most concentrated down): 0  0  1  4 10 18
    # % infected = cumI / (cumI + cumU): 100, 100, 14/15 = 93.3, 7/11 = 63.64, 2/12 = 16.67, 0
    # 50% lies between 10^-4 (63.64%) and 10^-5 (16.67%):
    # PD = (7/11 - 1/2) / (7/11 - 1/6) = (3/22) / (31/66) = 9/31 = 0.290323
    # endpoint = 10^-(4 + 9/31) = 10^-4.290323
    assert reed_muench(EXAMPLE) == pytest.approx(4 + 9 / 31, abs=1e-12)
    # per ml with 0.1 ml per well: 10^4.290323 / 0.1 = 10^5.290323 = 1.952e5 TCID50/ml
    assert titre_per_ml(4 + 9 / 31, 0.1) == pytest.approx(5.290323, abs=1e-6)
    assert 10 ** titre_per_ml(4 + 9 / 31, 0.1) == pytest.approx(1.952e5, rel=1e-3)


def test_spearman_karber_worked_example() -> None:
    # x0 = 2 (10^-2 is the most dilute of the leading all-positive dilutions), d = 1
    # Σ r/n from 10^-2 on = 8/8 + 7/8 + 5/8 + 2/8 + 0/8 = 22/8 = 2.75
    # log10 endpoint = x0 - d/2 + d·Σ = 2 - 0.5 + 2.75 = 4.25  (with x0 = 1: 1 - 0.5 + 3.75, the same)
    endpoint, warnings = spearman_karber(EXAMPLE)
    assert endpoint == pytest.approx(4.25, abs=1e-12) and warnings == []
    # per ml, 0.1 ml inoculum: 10^5.25 = 1.778e5 TCID50/ml
    assert 10 ** titre_per_ml(endpoint, 0.1) == pytest.approx(1.778e5, rel=1e-3)


def test_symmetric_series_both_methods_agree() -> None:
    # 4 wells: 4, 4, 2, 0, 0 at 10^-1..10^-5. SK: x0 = 2, Σ = 1 + 0.5 + 0 + 0 = 1.5 -> 2 - 0.5 + 1.5 = 3.0
    # RM: cumI 10 6 2 0 0, cumU 0 0 2 6 10 -> 100, 100, 50, 0, 0: exactly 50% at 10^-3, PD = 0 -> 3.0
    series = [Dilution(x, r, 4) for x, r in zip(range(1, 6), (4, 4, 2, 0, 0))]
    assert reed_muench(series) == pytest.approx(3.0)
    assert spearman_karber(series)[0] == pytest.approx(3.0)


def test_twofold_steps() -> None:
    # Twofold series, d = log10 2 = 0.30103; 4 wells: 4, 4, 2, 0 at x = 1, 1+d, 1+2d, 1+3d
    # SK: x0 = 1 + d; Σ = 1 + 0.5 + 0 = 1.5 -> 1 + d - d/2 + 1.5d = 1 + 2d = 1.60206
    d = math.log10(2)
    series = [Dilution(1 + i * d, r, 4) for i, r in enumerate((4, 4, 2, 0))]
    assert spearman_karber(series)[0] == pytest.approx(1 + 2 * d)


def test_assumptions_and_out_of_range() -> None:
    # Never reaching 0%: SK warns; RM still brackets 50% (8,6,4 of 8 -> cum % 100, 83.3... ok)
    _, warnings = spearman_karber([Dilution(1, 8, 8), Dilution(2, 6, 8), Dilution(3, 4, 8)])
    assert any("0% infected" in w for w in warnings)
    with pytest.raises(ValueError, match="50%"):
        reed_muench([Dilution(1, 8, 8), Dilution(2, 8, 8)])  # every dilution infected: titre above the range
    with pytest.raises(ValueError, match="equally spaced"):
        spearman_karber([Dilution(1, 8, 8), Dilution(2, 4, 8), Dilution(4, 0, 8)])


@pytest.mark.parametrize(("text", "x"), [("1e-3", 3), ("0.001", 3), ("-3", 3), ("1:1000", 3), ("1/100", 2), ("1000", 3), ("1", 0)])
def test_dilution_forms(text: str, x: float) -> None:
    assert parse_dilution(text) == pytest.approx(x)


def _example_results(tmp_path: Path) -> tuple[Path, Path]:
    """The EXAMPLE plate: sample S1 in columns 1-6 (10^-1..10^-6), rows A-H the 8 replicates,
    as a per-image CSV (one site per well) and a plate map using the log10 form."""
    header = ("Metadata_Plate,Metadata_Well,Metadata_Site,Metadata_Channel,Metadata_TimePoint,FileName_Phase,"
              "PathName_Phase,p_infected,label,qc_status,model_name,model_version,preprocessing_hash,input_sha256,request_id")
    lines, plate_map = [header], ["well,dilution,sample"]
    for column, infected in zip(range(1, 7), (8, 8, 7, 5, 2, 0)):
        for row_index, row in enumerate("ABCDEFGH"):
            positive = row_index < infected
            lines.append(f"T1,{row}{column},1,,,f.tif,/x,{0.97 if positive else 0.03},"
                         f"{'infected' if positive else 'uninfected'},,m,1,,{(row + str(column)).encode().hex():0>64},r")
            plate_map.append(f"{row}{column},-{column},S1")
    results, mapping = tmp_path / "titration.csv", tmp_path / "map.csv"
    results.write_text("\n".join(lines) + "\n")
    mapping.write_text("\n".join(plate_map) + "\n")
    return results, mapping


def test_titre_command_on_a_plate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results, mapping = _example_results(tmp_path)
    assert main(["titre", str(results), "--plate-map", str(mapping), "--inoculum-ml", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "reed_muench\t1.95e+05 TCID50/ml (log10 5.29)" in out
    assert "spearman_karber\t1.78e+05 TCID50/ml (log10 5.25)" in out
    table = (tmp_path / "titration.titre.csv").read_text()
    assert "1e-4:5/8" in table and "5.2903" in table


def test_titrate_needs_every_mapped_well() -> None:
    with pytest.raises(ValueError, match="no single well call"):
        titrate([{"well": "A1", "dilution": "1e-1"}], {("P", "B01"): "infected"})


# Published worked examples: Lei C, Yang J, Hu J, Sun X (2021) "On the calculation of TCID50 for
# quantitation of virus infectivity", Virologica Sinica 36:141-144, Tables 1 and 2 (their cases
# come from Burleson et al. 1992, Hierholzer & Killington 1996 and Svensson et al. 1999).
# (log10 dilution, infected, wells) per row; inoculum per well in ml; published TCID50/ml for
# Reed-Muench and Spearman-Karber.
PUBLISHED = [
    ("case 1", [(5, 5, 5), (6, 3, 5), (7, 1, 5), (8, 0, 5)], 0.1, 2.08e7, 2.00e7),
    ("case 2", [(1, 8, 8), (2, 7, 8), (3, 5, 8), (4, 3, 8), (5, 1, 8)], 0.1, 3.16e4, 3.16e4),
    ("case 3", [(3, 6, 6), (4, 6, 6), (5, 6, 6), (6, 5, 6), (7, 3, 6), (8, 1, 6)], 0.05, 2.00e8, 2.00e8),
]


@pytest.mark.parametrize(("case", "rows", "inoculum_ml", "reed_muench_per_ml", "spearman_karber_per_ml"),
                         PUBLISHED, ids=[case[0] for case in PUBLISHED])
def test_published_worked_examples(case: str, rows: list[tuple[int, int, int]], inoculum_ml: float,
                                   reed_muench_per_ml: float, spearman_karber_per_ml: float) -> None:
    dilutions = [Dilution(x, r, n) for x, r, n in rows]
    # The paper rounds to three significant figures.
    assert 10 ** titre_per_ml(reed_muench(dilutions), inoculum_ml) == pytest.approx(reed_muench_per_ml, rel=5e-3)
    log10_sk, _ = spearman_karber(dilutions)
    assert 10 ** titre_per_ml(log10_sk, inoculum_ml) == pytest.approx(spearman_karber_per_ml, rel=5e-3)
