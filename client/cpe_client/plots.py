"""Pictures of a plate: a heatmap of mean p_infected per well, and infected fraction over time."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

from cpe_client.wells import PLATE_FORMATS, plate_format_for, row_letters, well_position


def plot_heatmap(wells: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Rows A.., columns 1..; colour = mean p_infected (0..1); flagged wells marked ×,
    wells called infected outlined; wells without images left blank."""
    size = plate_format_for([w["Metadata_Well"] for w in wells])
    rows, columns = PLATE_FORMATS[size]
    grid = [[float("nan")] * columns for _ in range(rows)]
    scale = 12 / columns
    fig, ax = plt.subplots(figsize=(max(6.0, columns * 0.55 * scale + 2), max(3.5, rows * 0.55 * scale + 1.2)))
    for well in wells:
        row, column = well_position(well["Metadata_Well"])
        grid[row - 1][column - 1] = float(well["mean_p_infected"])
    ax.set_facecolor("#e6e6e6")  # wells without images
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="equal")
    for well in wells:
        row, column = well_position(well["Metadata_Well"])
        if well["call"] == "infected":
            ax.add_patch(Rectangle((column - 1.5, row - 1.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
        if int(well["flagged"]):
            ax.text(column - 1, row - 1, "×", ha="center", va="center", color="white", fontsize=12 * scale)
    step = 1 if columns <= 24 else 4
    ax.set_xticks(range(0, columns, step), [str(c + 1) for c in range(0, columns, step)], fontsize=8)
    ax.set_yticks(range(rows), [row_letters(r + 1) for r in range(rows)], fontsize=8)
    ax.xaxis.tick_top()
    ax.set_title(f"{title}  (red outline: well called infected; ×: QC / low-confidence flag)", fontsize=9)
    fig.colorbar(image, ax=ax, label="mean p(infected)", shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_heatmaps(wells: list[dict[str, Any]], results: Path) -> list[Path]:
    """One heatmap per plate and time point: `<results>.heatmap.<plate>[.t<N>].png`."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for well in wells:
        groups[(well["Metadata_Plate"], well["Metadata_TimePoint"])].append(well)
    paths = []
    for (plate, time_point), group in sorted(groups.items()):
        name = f"{results.stem}.heatmap.{plate or 'plate'}" + (f".t{time_point}" if time_point else "") + ".png"
        title = f"{plate or 'plate'}" + (f", time point {time_point}" if time_point else "")
        paths.append(plot_heatmap(group, results.with_name(name.replace("/", "_")), title))
    return paths


def plot_time_course(plates: list[dict[str, Any]], path: Path) -> Path:
    """Fraction of wells called infected per time point, one line per plate."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in plates:
        if row["Metadata_TimePoint"]:
            series[row["Metadata_Plate"]].append((int(row["Metadata_TimePoint"]), float(row["infected_fraction"])))
    fig, ax = plt.subplots(figsize=(6, 4))
    for plate, points in sorted(series.items()):
        points.sort()
        ax.plot([t for t, _ in points], [f for _, f in points], marker="o", label=plate or "plate")
    ax.set_xlabel("time point")
    ax.set_ylabel("fraction of wells called infected")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
