"""Which images a plate folder holds: plate/well/site/channel/time point from file names.

Built-in layouts are the export names of the lab's instruments; `--pattern` (a regex with
named groups) and a file-map CSV cover anything else.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from cpe_client.wells import normalize_well

IMAGE_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg"})
LAYOUTS = ("imagexpress", "operetta", "incucyte")

#: MetaXpress: `<plate>_<well>[_s<site>][_w<channel>[<GUID>]].tif`, time points in `TimePoint_N/`.
_IMAGEXPRESS = re.compile(
    r"(?P<plate>.+?)_(?P<well>[A-Za-z]{1,2}\d{1,3})(?:_s(?P<site>\d+))?"
    r"(?:_w(?P<channel>\d+)(?:[0-9A-Fa-f]{8}-[0-9A-Fa-f-]{27})?)?\.tiff?", re.IGNORECASE)
_TIMEPOINT_DIR = re.compile(r"TimePoint_(\d+)", re.IGNORECASE)
#: Operetta/Opera (Harmony): `r02c07f03p01-ch1sk1fk1fl1.tiff` (sk = time point).
_OPERETTA = re.compile(
    r"(?P<well>r\d{2}c\d{2})f(?P<site>\d+)p(?P<plane>\d+)-ch(?P<channel>\d+)sk(?P<time_point>\d+)"
    r"fk\d+fl\d+\.tiff?", re.IGNORECASE)
#: Incucyte: `<vessel>_<well>_<site>_<yyyy>y<mm>m<dd>d_<hh>h<mm>m.tif`.
_INCUCYTE = re.compile(
    r"(?P<plate>.+?)_(?P<well>[A-Za-z]{1,2}\d{1,3})_(?P<site>\d+)_"
    r"(?P<stamp>\d{4}y\d{2}m\d{2}d_\d{2}h\d{2}m)\.tiff?", re.IGNORECASE)


@dataclass(frozen=True)
class ImageRecord:
    """One image file and where on which plate it was taken."""

    path: Path
    plate: str | None = None
    well: str | None = None
    site: int | None = None
    channel: str | None = None
    time_point: int | None = None
    stamp: str | None = None  # Incucyte scan time, turned into a time point index

    def metadata(self) -> dict[str, object]:
        """The `metadata` object the client sends for this image."""
        return {"id": self.path.name, "plate": self.plate, "well": self.well, "site": self.site,
                "channel": self.channel, "time_point": self.time_point}


def _int(text: str | None) -> int | None:
    return int(text) if text not in (None, "") else None


def _record(path: Path, groups: dict[str, str | None], plate: str | None) -> ImageRecord:
    well = groups.get("well")
    return ImageRecord(
        path=path,
        plate=groups.get("plate") or plate,
        well=normalize_well(well) if well else None,
        site=_int(groups.get("site")),
        channel=groups.get("channel") or None,
        time_point=_int(groups.get("time_point")),
        stamp=groups.get("stamp"),
    )


def image_files(root: Path) -> list[Path]:
    """Every image below `root`, sorted; thumbnails (`*_thumb*`) left out."""
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and "_thumb" not in p.name.lower())


def parse_name(layout: str, path: Path, root: Path, plate: str | None = None) -> ImageRecord | None:
    """The record for one file in a built-in layout, or None if the name does not fit it."""
    if layout == "imagexpress":
        match = _IMAGEXPRESS.fullmatch(path.name)
        if not match:
            return None
        groups: dict[str, str | None] = dict(match.groupdict())
        for part in reversed(path.relative_to(root).parts[:-1]):
            timepoint = _TIMEPOINT_DIR.fullmatch(part)
            if timepoint:
                groups["time_point"] = timepoint.group(1)
                break
        return _record(path, groups, plate)
    if layout == "operetta":
        match = _OPERETTA.fullmatch(path.name)
        # Harmony exports have no plate in the name: the folder given (or --plate) names it.
        return _record(path, dict(match.groupdict()), plate or root.resolve().name) if match else None
    if layout == "incucyte":
        match = _INCUCYTE.fullmatch(path.name)
        return _record(path, dict(match.groupdict()), plate) if match else None
    raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")


def _number_incucyte_scans(records: list[ImageRecord]) -> list[ImageRecord]:
    """Incucyte names carry the scan time: time point = 1-based rank of the scan per plate."""
    stamps: dict[str | None, list[str]] = {}
    for record in records:
        if record.stamp:
            stamps.setdefault(record.plate, []).append(record.stamp)
    ranks = {plate: {stamp: i + 1 for i, stamp in enumerate(sorted(set(values)))}
             for plate, values in stamps.items()}
    return [replace(r, time_point=ranks[r.plate][r.stamp]) if r.stamp else r for r in records]


def from_layout(root: Path, layout: str = "auto", plate: str | None = None) -> list[ImageRecord]:
    """Records of every image under `root` in one built-in layout (`auto`: the best fit)."""
    files = image_files(root)
    if not files:
        raise ValueError(f"no images (.tif/.tiff/.png/.jpg) under {root}")
    candidates = LAYOUTS if layout == "auto" else (layout,)
    best: list[ImageRecord] = []
    for name in candidates:
        records = [r for r in (parse_name(name, p, root, plate) for p in files) if r is not None]
        if len(records) > len(best):
            best, layout = records, name
    if not best:
        raise ValueError(f"no file name under {root} fits the {'/'.join(candidates)} layout; "
                         "use --pattern or --file-map")
    return _number_incucyte_scans(best)


def from_pattern(root: Path, pattern: str, plate: str | None = None) -> list[ImageRecord]:
    """Records from a regex with named groups (plate, well, site, channel, time_point),
    searched in each file's path relative to `root` (so folders can be captured too)."""
    regex = re.compile(pattern)
    unknown = set(regex.groupindex) - {"plate", "well", "site", "channel", "time_point"}
    if unknown:
        raise ValueError(f"--pattern has unknown groups {sorted(unknown)}")
    records = []
    for path in image_files(root):
        match = regex.search(path.relative_to(root).as_posix())
        if match:
            records.append(_record(path, match.groupdict(), plate))
    if not records:
        raise ValueError(f"--pattern {pattern!r} matches no file under {root}")
    return records


def from_file_map(root: Path, map_path: Path) -> list[ImageRecord]:
    """Records from a CSV with a `file` column (relative to `root`) and optional
    plate, well, site, channel, time_point columns."""
    with map_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "file" not in rows[0]:
        raise ValueError(f"{map_path} needs a 'file' column")
    records = []
    for row in rows:
        path = (root / row["file"]) if not Path(row["file"]).is_absolute() else Path(row["file"])
        if not path.is_file():
            raise ValueError(f"{map_path}: {row['file']} does not exist")
        records.append(_record(path, {k: (v or None) for k, v in row.items()}, None))
    return records


def pick_channel(records: Iterable[ImageRecord], channel: str | None) -> list[ImageRecord]:
    """Only the phase-contrast channel's images; refuses to guess among several channels."""
    records = list(records)
    if channel is not None:
        wanted = channel.lower().removeprefix("ch").removeprefix("w")
        chosen = [r for r in records if (r.channel or "").lower() == wanted]
        if not chosen:
            raise ValueError(f"no image in channel {channel!r}; channels found: {_channels(records)}")
        return chosen
    if len(_channels(records)) > 1:
        raise ValueError(f"several channels found {_channels(records)}: pick the phase-contrast one with --channel")
    return records


def _channels(records: list[ImageRecord]) -> list[str]:
    return sorted({r.channel for r in records if r.channel is not None})
