"""TCID50 from a dilution plate map and per-well calls: Reed–Muench and Spearman–Kärber.

Notation: x = log10 of the *reciprocal* dilution (10^-3 -> x = 3), so x grows as the sample
gets more dilute; d = the constant log10 step between dilutions (1 for tenfold); at each
dilution r of n inoculated wells show CPE. Both methods give the log10 reciprocal of the
dilution that infects 50% of wells (the endpoint, E); the titre is then

    TCID50/ml = 10^E / v      (v = inoculum per well in ml, default 0.1)

Reed & Muench (1938), Am J Hyg 27:493-497: accumulate infected wells from the most dilute
dilution upward and uninfected wells from the most concentrated downward (a well infected at
a high dilution would have been infected at any lower one, and vice versa); the cumulative
infected percentage p(x) falls through 50% between x_a (p_a >= 50%) and the next dilution
x_b (p_b < 50%); proportionate distance PD = (p_a - 50) / (p_a - p_b); E = x_a + PD·(x_b - x_a).

Spearman (1908), Br J Psychol 2:227-242 / Kärber (1931), Arch Exp Pathol Pharmakol
162:480-483: E = x0 - d/2 + d·Σ r_i/n_i, the sum running over x0 and every more dilute
dilution, where x0 is the most dilute dilution of the leading run of all-positive
dilutions. Assumes equal spacing and the same n, that the series starts at 100% and ends at
0% infected; departures are reported as warnings (the estimate is then biased).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from cpe_client.wells import normalize_well

DEFAULT_INOCULUM_ML = 0.1


@dataclass(frozen=True)
class Dilution:
    """One dilution of a sample: x = log10 reciprocal dilution, r infected of n wells."""

    x: float
    infected: int
    wells: int


@dataclass
class Titre:
    sample: str
    method: str
    log10_endpoint: float  # E: log10 reciprocal of the 50% endpoint dilution
    log10_tcid50_per_ml: float
    warnings: list[str] = field(default_factory=list)

    @property
    def tcid50_per_ml(self) -> float:
        return 10 ** self.log10_tcid50_per_ml


def parse_dilution(text: str) -> float:
    """A dilution as x = log10 reciprocal: `1e-3`, `0.001`, `1:1000`, `1/1000` -> 3.0;
    zero or negative numbers are log10 already (`-3` -> 3.0); numbers > 1 are reciprocal
    factors (`1000` -> 3.0)."""
    text = text.strip()
    for sep in (":", "/"):
        if sep in text:
            top, bottom = (float(part) for part in text.split(sep, 1))
            return math.log10(bottom / top)
    value = float(text)
    if value <= 0:
        return -value
    return -math.log10(value) if value <= 1 else math.log10(value)


def _cleaned(dilutions: list[Dilution]) -> list[Dilution]:
    rows = sorted(dilutions, key=lambda d: d.x)
    if len(rows) < 2:
        raise ValueError("a titration needs at least two dilutions")
    if any(d.wells <= 0 or not 0 <= d.infected <= d.wells for d in rows):
        raise ValueError("each dilution needs 0 <= infected <= wells and wells > 0")
    return rows


def reed_muench(dilutions: list[Dilution]) -> float:
    """E by Reed & Muench (see module docstring); ValueError if 50% is not crossed."""
    rows = _cleaned(dilutions)
    cum_infected = [sum(d.infected for d in rows[i:]) for i in range(len(rows))]
    cum_uninfected = [sum(d.wells - d.infected for d in rows[: i + 1]) for i in range(len(rows))]
    percent = [100 * i / (i + u) if i + u else 0.0 for i, u in zip(cum_infected, cum_uninfected)]
    for a in range(len(rows) - 1):
        if percent[a] >= 50 > percent[a + 1]:
            distance = (percent[a] - 50) / (percent[a] - percent[a + 1])
            return rows[a].x + distance * (rows[a + 1].x - rows[a].x)
    raise ValueError(f"cumulative infection never falls through 50% (percentages {[round(p, 1) for p in percent]}): "
                     "extend the dilution series")


def spearman_karber(dilutions: list[Dilution]) -> tuple[float, list[str]]:
    """E by Spearman–Kärber (see module docstring), with warnings for unmet assumptions."""
    rows = _cleaned(dilutions)
    warnings: list[str] = []
    steps = {round(b.x - a.x, 9) for a, b in pairwise(rows)}
    if len(steps) != 1:
        raise ValueError(f"Spearman–Kärber needs equally spaced dilutions; log10 steps found: {sorted(steps)}")
    d = steps.pop()
    if len({r.wells for r in rows}) != 1:
        warnings.append("unequal numbers of wells per dilution")
    start = 0
    while start + 1 < len(rows) and rows[start + 1].infected == rows[start + 1].wells and rows[start].infected == rows[start].wells:
        start += 1
    if rows[0].infected != rows[0].wells:
        warnings.append("the most concentrated dilution is not 100% infected: titre underestimated")
    if rows[-1].infected != 0:
        warnings.append("the most dilute dilution is not 0% infected: titre underestimated")
    endpoint = rows[start].x - d / 2 + d * sum(r.infected / r.wells for r in rows[start:])
    return endpoint, warnings


def titre_per_ml(log10_endpoint: float, inoculum_ml: float = DEFAULT_INOCULUM_ML) -> float:
    """log10 TCID50 per ml: E (per inoculum) scaled from `inoculum_ml` to 1 ml."""
    if inoculum_ml <= 0:
        raise ValueError("inoculum volume must be positive")
    return log10_endpoint - math.log10(inoculum_ml)


def read_plate_map(path: Path) -> list[dict[str, str]]:
    """Rows of a plate map CSV: well, dilution, optional sample and plate columns."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"well", "dilution"} <= set(rows[0]):
        raise ValueError(f"{path} needs 'well' and 'dilution' columns (optional 'sample', 'plate')")
    return rows


def titrate(plate_map: list[dict[str, str]], calls: dict[tuple[str, str], str],
            inoculum_ml: float = DEFAULT_INOCULUM_ML) -> tuple[list[Titre], dict[str, list[Dilution]]]:
    """Titres per sample by both methods. `calls` maps (plate, well) -> 'infected'/'uninfected';
    a plate-map row without a plate matches a well of that name on any single plate."""
    counts: dict[str, dict[float, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    missing = []
    for row in plate_map:
        well = normalize_well(row["well"])
        plate = (row.get("plate") or "").strip()
        matches = [call for (p, w), call in calls.items() if w == well and (not plate or p == plate)]
        if len(matches) != 1:
            missing.append(f"{plate + ':' if plate else ''}{well}")
            continue
        tally = counts[(row.get("sample") or "sample").strip()][parse_dilution(row["dilution"])]
        tally[0] += matches[0] == "infected"
        tally[1] += 1
    if missing:
        raise ValueError(f"no single well call for {len(missing)} plate-map wells (e.g. {missing[:5]}); "
                         "check the plate map, or add a 'plate' column")
    titres: list[Titre] = []
    series: dict[str, list[Dilution]] = {}
    for sample, by_x in sorted(counts.items()):
        series[sample] = [Dilution(x, r, n) for x, (r, n) in sorted(by_x.items())]
        try:
            e = reed_muench(series[sample])
            titres.append(Titre(sample, "reed_muench", e, titre_per_ml(e, inoculum_ml)))
        except ValueError as err:
            titres.append(Titre(sample, "reed_muench", math.nan, math.nan, [str(err)]))
        try:
            e, warnings = spearman_karber(series[sample])
            titres.append(Titre(sample, "spearman_karber", e, titre_per_ml(e, inoculum_ml), warnings))
        except ValueError as err:
            titres.append(Titre(sample, "spearman_karber", math.nan, math.nan, [str(err)]))
    return titres, series
