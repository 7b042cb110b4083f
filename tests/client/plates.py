"""Small plate folders in each instrument's naming layout, for the client's tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from cpe_client.wells import well_position


def tiny_tiff(path: Path, seed: int, size: int = 64) -> None:
    """A unique 16-bit 64x64 field (the service resizes it to the model's input)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, rng.integers(0, 4096, size=(size, size), dtype=np.uint16))


def file_name(layout: str, plate: str, well: str, site: int, time_point: int, channel: int) -> str:
    """Where an image of (plate, well, site, time point, channel) lives, relative to the plate folder."""
    row, column = well_position(well)
    if layout == "imagexpress":  # MetaXpress: TimePoint_N/<plate>_<well>_s<site>_w<channel>.tif
        return f"TimePoint_{time_point}/{plate}_{well[0]}{column:02d}_s{site}_w{channel}.tif"
    if layout == "operetta":  # Harmony: r02c07f03p01-ch1sk1fk1fl1.tiff (plate = folder name)
        return f"r{row:02d}c{column:02d}f{site:02d}p01-ch{channel}sk{time_point}fk1fl1.tiff"
    if layout == "incucyte":  # <vessel>_<well>_<site>_<yyyy>y<mm>m<dd>d_<hh>h<mm>m.tif, 12 h apart
        day, hour = 20 + (time_point - 1) // 2, 8 + 12 * ((time_point - 1) % 2)
        return f"{plate}_{well[0]}{column}_{site}_2026y11m{day:02d}d_{hour:02d}h00m.tif"
    raise ValueError(layout)


def write_plate(root: Path, layout: str, wells: list[str], sites: int = 2, time_points: int = 2,
                channels: int = 1, plate: str = "P001", seed: int = 0) -> list[Path]:
    """Every (well, site, time point, channel) image of a plate; returns the paths."""
    paths: list[Path] = []
    for t in range(1, time_points + 1):
        for well in wells:
            for site in range(1, sites + 1):
                for channel in range(1, channels + 1):
                    path = root / file_name(layout, plate, well, site, t, channel)
                    tiny_tiff(path, seed=seed + len(paths))
                    paths.append(path)
    return paths


def wells_of(rows: str, columns: range) -> list[str]:
    return [f"{r}{c:02d}" for r in rows for c in columns]
