"""Labelled image manifests of a lab (path,label[,plate,well,site]) for finetune / validate."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

_POSITIVE = {"infected", "1", "true", "positive"}
_NEGATIVE = {"uninfected", "0", "false", "negative"}


def read_labelled(path: Path) -> list[dict[str, Any]]:
    """Rows with an absolute `path`, `label` 0/1 and optional plate/well/site.

    Relative paths are resolved against the manifest's folder; labels may be
    infected/uninfected or 1/0.
    """
    path = Path(path)
    rows = []
    with open(path, newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            if "path" not in row or "label" not in row:
                raise ValueError(f"{path}: columns path,label are required")
            label = str(row["label"]).strip().lower()
            if label not in _POSITIVE | _NEGATIVE:
                raise ValueError(f"{path}:{line}: label {row['label']!r} is not infected/uninfected/1/0")
            image = Path(row["path"])
            rows.append({
                **{k: row.get(k, "") or "" for k in ("plate", "well", "site")},
                "path": image if image.is_absolute() else (path.parent / image).resolve(),
                "label": int(label in _POSITIVE),
            })
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def load_images(rows: list[dict[str, Any]], height: int, width: int) -> NDArray[np.float32]:
    """Raw-intensity model inputs (N, height, width, 1) via the serving preprocessing."""
    from service.preprocessing import prepare
    from training.package_images import load_pixels

    return np.stack([prepare(load_pixels(Path(r["path"])), height, width, 1) for r in rows])


def split_by_well(rows: list[dict[str, Any]], every: int = 5) -> tuple[list[int], list[int]]:
    """Train / validation indices; sites of one well (plate+well) stay on one side."""
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        key = f"{row['plate']}|{row['well']}" if row["well"] else f"row{i}"
        groups.setdefault(key, []).append(i)
    train, val = [], []
    for j, members in enumerate(groups.values()):
        (val if j % every == every - 1 else train).extend(members)
    if not val or not train:  # too small to split: validate on the training images
        return list(range(len(rows))), list(range(len(rows)))
    return train, val
