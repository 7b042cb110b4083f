"""Synthetic phase-contrast images of MDCK monolayers, with and without influenza CPE.

An *honest* generator: it exists so the service, its tests and `make train` can run end to end
without real microscopy data. It says nothing about real MDCK images (see MODEL_CARD.md).

Scene model (geometry is rendered at half resolution, 680x512, then upsampled to 1360x1024):

* Confluent cobblestone layer: a jittered-grid Voronoi tessellation (cells ~26-40 px across at
  full resolution), dark cell borders, faint darker nuclei with bright nucleoli, cytoplasm
  texture and per-cell brightness.
* Influenza CPE (`influenza`, label infected): plaque-like foci. Every cell gets an "infection
  time" from its distance to the nearest focus centre (plus noise); cells at the focus rim
  contract (gaps with bright edges), further in they round up, shrink and turn bright-haloed
  and granular, and at the centre they detach leaving empty substrate and debris. Severity
  1-4 sets the CPE area fraction (1: one small focus, a few % of the field; 4: most of the
  monolayer destroyed); hpi (16/28/40 h) is drawn consistent with severity and sets how far
  detachment has progressed.
* Hard negatives (label uninfected): `subconfluent` (gaps with clean edges, no rounded cells),
  `mitotic` (isolated bright round cells spread over the field), `debris` (uniform specks) and
  `trypsin` (mild uniform contraction of every cell).
* Non-influenza CPE (label uninfected for the influenza question): `syncytia` (large fused
  cells without internal borders and with clustered nuclei) and `grape_cluster` (tight
  grape-like bunches of large swollen round cells on an intact monolayer, adenovirus-like).
* Nuisances, drawn from a separate random stream so they are independent of the label:
  illumination gradient and vignetting, defocus blur, shot noise (Gaussian approximation of
  Poisson) plus read noise, exposure, bit depth (8-bit, 12-bit in uint16, full 16-bit), dust,
  flips and 180 degree rotation.
* Intensity statistics are equalised: the mean and standard deviation of every rendered scene
  are mapped onto targets drawn from the nuisance stream, so brightness and global contrast
  carry no information about the class.

Everything is a deterministic function of (seed, kind, severity, hpi). Seeds of the train,
validation and test splits come from disjoint ranges (`SPLIT_SEED_BASE`).

CLI: ``python -m training.synthetic --out DIR --count N --split test`` writes TIFFs and
``manifest.csv``.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from training.families import FAMILIES, V1, Style, draw_style

GENERATOR_VERSION = "2.0"
#: Seeds of the v1 family are derived as in generator 1.0, so its images stay byte-identical.
_V1_SEED_VERSION = "1.0"

HEIGHT, WIDTH = 1024, 1360
_H2, _W2 = HEIGHT // 2, WIDTH // 2  # geometry is rendered at half resolution

UNINFECTED = "uninfected"
INFLUENZA = "influenza"
HARD_NEGATIVE_KINDS = ("subconfluent", "mitotic", "debris", "trypsin", "dense_patch", "mixed")
NON_INFLUENZA_KINDS = ("syncytia", "grape_cluster")
KINDS = (UNINFECTED, *HARD_NEGATIVE_KINDS, INFLUENZA, *NON_INFLUENZA_KINDS)
LABELS = ("uninfected", "infected")
HPI_VALUES = (16, 28, 40)
BIT_DEPTHS = (8, 12, 16)

#: Seeds of split s are SPLIT_SEED_BASE[s] + index, index < SPLIT_SIZE_LIMIT: disjoint ranges.
SPLIT_SEED_BASE = {"train": 0, "validation": 1_000_000, "test": 2_000_000}
SPLIT_SIZE_LIMIT = 1_000_000

MANIFEST_COLUMNS = (
    "plate", "well", "site", "hpi", "severity", "kind", "label", "seed", "generator_version",
)
_EXTRA_MANIFEST_COLUMNS = ("family", "file", "bit_depth", "cpe_fraction")

#: P(severity | hpi) for influenza: 16 h mostly grade 1-2, 28 h 2-3, 40 h 3-4.
SEVERITY_GIVEN_HPI = {
    16: {1: 0.55, 2: 0.35, 3: 0.10, 4: 0.00},
    28: {1: 0.10, 2: 0.40, 3: 0.40, 4: 0.10},
    40: {1: 0.00, 2: 0.10, 3: 0.40, 4: 0.50},
}
#: Target CPE area fraction (cells contracted, rounded or detached) per severity grade.
_SEVERITY_AREA = {1: (0.02, 0.06), 2: (0.09, 0.20), 3: (0.26, 0.50), 4: (0.62, 0.90)}
_SEVERITY_FOCI = {1: (1, 1), 2: (1, 3), 3: (2, 4), 4: (3, 6)}
#: Infection-time threshold beyond which cells have detached, by hpi (later -> more detached).
_DETACH_T = {16: 0.80, 28: 0.60, 40: 0.42}

# Cell states.
_NORMAL, _CONTRACT, _ROUND, _DETACHED, _ABSENT, _MITOTIC = 0, 1, 2, 3, 4, 5

# Plate layout.
_ROWS = "ABCDEFGH"
_COLS = 12
_SITES_PER_WELL = 3

# Composition of generated sets (fractions of wells).
DEFAULT_MIX = {
    INFLUENZA: 0.50,
    UNINFECTED: 0.20,
    "subconfluent": 0.05,
    "mitotic": 0.05,
    "debris": 0.05,
    "trypsin": 0.05,
    "syncytia": 0.05,
    "grape_cluster": 0.05,
}
#: Generator v2 sets: every hard negative and non-influenza CPE kind, half the wells influenza.
MIX_V2 = {
    INFLUENZA: 0.50,
    UNINFECTED: 0.14,
    **{kind: 0.04 for kind in HARD_NEGATIVE_KINDS},
    **{kind: 0.06 for kind in NON_INFLUENZA_KINDS},
}


def label_of(kind: str) -> str:
    """Influenza CPE is 'infected'; everything else (incl. other viruses' CPE) 'uninfected'."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    return LABELS[1] if kind == INFLUENZA else LABELS[0]


def split_of_seed(seed: int) -> str:
    for split, base in SPLIT_SEED_BASE.items():
        if base <= seed < base + SPLIT_SIZE_LIMIT:
            return split
    raise ValueError(f"seed {seed} is outside every split range")


# --------------------------------------------------------------------------------------------
# Geometry


def _voronoi(rng: np.random.Generator, spacing: int, regularity: float):
    """Jittered-grid Voronoi at half resolution.

    Returns (idx1, idx2, d1, border, seeds_y, seeds_x, grid_shape): nearest / second-nearest
    seed index per pixel, distance to the own seed, approximate distance to the cell border.
    Only the 3x3 neighbouring grid blocks are searched (exact enough for a jittered grid),
    with block-wise broadcasting instead of per-pixel gathers.
    """
    s = spacing
    gy, gx = math.ceil(_H2 / s), math.ceil(_W2 / s)
    lo, hi = 0.5 - regularity / 2, 0.5 + regularity / 2
    py, px = gy + 2, gx + 2
    sy = ((np.arange(py)[:, None] - 1) + rng.uniform(lo, hi, (py, px))) * s
    sx = ((np.arange(px)[None, :] - 1) + rng.uniform(lo, hi, (py, px))) * s
    sy = sy.astype(np.float32)
    sx = sx.astype(np.float32)
    local = np.arange(s, dtype=np.float32)
    ly = local[None, :, None, None]
    lx = local[None, None, None, :]
    oy = (np.arange(gy, dtype=np.float32) * s)[:, None]
    ox = (np.arange(gx, dtype=np.float32) * s)[None, :]
    base_index = (np.arange(gy)[:, None] + 1) * px + (np.arange(gx)[None, :] + 1)
    best1 = best2 = idx1 = idx2 = None
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            rel_y = sy[1 + di : 1 + di + gy, 1 + dj : 1 + dj + gx] - oy
            rel_x = sx[1 + di : 1 + di + gy, 1 + dj : 1 + dj + gx] - ox
            dy = ly - rel_y[:, None, :, None]
            dx = lx - rel_x[:, None, :, None]
            d2 = dy * dy + dx * dx  # (gy, s, gx, s)
            index = (base_index + di * px + dj).astype(np.int32)[:, None, :, None]
            if best1 is None:
                best1 = d2
                idx1 = np.broadcast_to(index, d2.shape).copy()
                best2 = np.full_like(d2, np.inf)
                idx2 = idx1.copy()
                continue
            closer = d2 < best1
            second = ~closer & (d2 < best2)
            best2 = np.where(closer, best1, np.where(second, d2, best2))
            idx2 = np.where(closer, idx1, np.where(second, index, idx2))
            best1 = np.where(closer, d2, best1)
            idx1 = np.where(closer, index, idx1)
    shape = (gy * s, gx * s)
    d1 = np.sqrt(best1.reshape(shape)[:_H2, :_W2])
    d2 = np.sqrt(best2.reshape(shape)[:_H2, :_W2])
    idx1 = idx1.reshape(shape)[:_H2, :_W2]
    idx2 = idx2.reshape(shape)[:_H2, :_W2]
    border = 0.5 * (d2 - d1)
    return idx1, idx2, d1, border, sy.ravel(), sx.ravel()


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> NDArray:
    """Gaussian-filtered white noise with unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return field / (field.std() + 1e-6)


def _splat(shape, ys, xs, weights, sigma: float) -> NDArray[np.float32]:
    """Sum of Gaussian blobs with peak ~weight at (ys, xs)."""
    img = np.zeros(shape, np.float32)
    yi = np.round(ys).astype(np.int64)
    xi = np.round(xs).astype(np.int64)
    ok = (yi >= 0) & (yi < shape[0]) & (xi >= 0) & (xi < shape[1])
    np.add.at(img, (yi[ok], xi[ok]), np.asarray(weights, np.float32)[ok])
    if sigma > 0:
        img = ndimage.gaussian_filter(img, sigma, truncate=3.0)
        img *= 2 * math.pi * sigma * sigma
    return img


def _draw_spheres(img, cy, cx, radius, body, halo, dark_rim, glow, granular=None, gain=0.0):
    """Draw refractile round cells (loop over a few dozen objects, bounding boxes only)."""
    for y, x, r in zip(cy, cx, radius):
        pad = r + 4
        y0, y1 = max(int(y - pad), 0), min(int(y + pad) + 1, img.shape[0])
        x0, x1 = max(int(x - pad), 0), min(int(x + pad) + 1, img.shape[1])
        if y0 >= y1 or x0 >= x1:
            continue
        yy = np.arange(y0, y1, dtype=np.float32)[:, None] - y
        xx = np.arange(x0, x1, dtype=np.float32)[None, :] - x
        d = np.sqrt(yy * yy + xx * xx)
        inside = np.clip(r + 0.5 - d, 0.0, 1.0)
        patch = img[y0:y1, x0:x1]
        value = body + glow * np.exp(-((d / (0.45 * r)) ** 2))
        if granular is not None:
            value = value + gain * granular[y0:y1, x0:x1]
        patch *= 1.0 - inside
        patch += inside * value
        patch += halo * np.exp(-(((d - r - 0.7) / 0.9) ** 2))
        patch += dark_rim * np.exp(-(((d - r + 0.8) / 0.7) ** 2))


def _poisson_disc_cluster(rng, center, n, radius, min_dist):
    """Up to n points packed around `center` (a grape-like bunch)."""
    pts = [np.asarray(center, np.float64)]
    tries = 0
    while len(pts) < n and tries < 60 * n:
        tries += 1
        anchor = pts[rng.integers(len(pts))]
        angle = rng.uniform(0, 2 * math.pi)
        cand = anchor + min_dist * rng.uniform(1.0, 1.15) * np.array([math.sin(angle), math.cos(angle)])
        if np.hypot(*(cand - center)) > radius:
            continue
        if min(np.hypot(*(cand - p)) for p in pts) < min_dist:
            continue
        pts.append(cand)
    return np.array(pts)


# --------------------------------------------------------------------------------------------
# Scene


def _influenza_states(rng, seeds_y, seeds_x, severity, hpi, spacing, style: Style):
    """Per-cell state and infection time for plaque-like foci of a given severity."""
    n_cells = seeds_y.size
    area = _H2 * _W2
    lo, hi = _SEVERITY_AREA[severity]
    target = rng.uniform(lo, hi)
    n_foci = int(rng.integers(_SEVERITY_FOCI[severity][0], _SEVERITY_FOCI[severity][1] + 1))
    # Overlapping foci cover less than the sum of their areas: inflate the radii a little.
    inflate = 1.0 + 0.8 * target * (n_foci > 1)
    share = rng.dirichlet(np.full(n_foci, 3.0)) * target * area * inflate
    radii = np.sqrt(share / math.pi)
    margin = 0.3
    cy = rng.uniform(margin * _H2 * 0.3, _H2 * (1 - margin * 0.3), n_foci)
    cx = rng.uniform(margin * _W2 * 0.3, _W2 * (1 - margin * 0.3), n_foci)
    if severity == 1:  # a single small focus well inside the field
        cy = rng.uniform(radii + 10, _H2 - radii - 10, 1)
        cx = rng.uniform(radii + 10, _W2 - radii - 10, 1)
    t = np.full(n_cells, -np.inf)
    for y, x, r in zip(cy, cx, radii):
        dist = np.hypot(seeds_y - y, seeds_x - x)
        # Irregular plaque outline: angular modulation of the radius.
        angle = np.arctan2(seeds_y - y, seeds_x - x)
        phase = rng.uniform(0, 2 * math.pi, 3)
        wobble = 1 + style.plaque_wobble * (np.sin(2 * angle + phase[0]) + np.sin(3 * angle + phase[1]))
        if style.plaque_ragged:  # ragged rim: high angular harmonics
            wobble = wobble + style.plaque_ragged * np.sin(9 * angle + phase[2])
        t = np.maximum(t, 1.0 - dist / (r * wobble))
    t = t + rng.normal(0, 0.08, n_cells) * (t > -0.3)
    # Rim width in units of t: about 1.2 cells of contraction, whatever the focus size.
    rim = np.clip(1.3 * spacing / radii.mean(), 0.06, 0.35)
    state = np.full(n_cells, _NORMAL, np.int8)
    state[t > 0] = _CONTRACT
    state[t > rim] = _ROUND
    detach = _DETACH_T[hpi] + style.detach_shift
    detached = (t > detach) & (rng.random(n_cells) > 0.25)  # some rounded cells stay attached
    state[detached] = _DETACHED
    return state, t


def _render_scene(rng: np.random.Generator, cpe_rng: np.random.Generator, kind: str,
                  severity: int, hpi: int, style: Style = Style()):
    """Relative-intensity scene at half resolution and its CPE mask (same resolution).

    `rng` draws the healthy layer (shared by every kind for a given seed), `cpe_rng` what the
    kind adds, so the same seed gives the same monolayer with and without CPE.
    """
    spacing = int(rng.integers(*style.spacing))  # v1: 28-38 px at full resolution
    regularity = rng.uniform(*style.regularity)
    idx1, idx2, d1, border, seeds_y, seeds_x = _voronoi(rng, spacing, regularity)
    n_cells = seeds_y.size
    shape = (_H2, _W2)

    state = np.full(n_cells, _NORMAL, np.int8)
    gap = np.zeros(n_cells, np.float32)  # contraction gap (half-res px)
    round_r = rng.uniform(*style.round_radius, n_cells).astype(np.float32)  # influenza rounded body
    syncytium = np.full(n_cells, -1, np.int32)
    nuc_y = seeds_y + rng.normal(0, 0.12 * spacing, n_cells)
    nuc_x = seeds_x + rng.normal(0, 0.12 * spacing, n_cells)
    tex = _smooth_noise(rng, shape, style.texture_sigma)
    gran = rng.standard_normal(shape, dtype=np.float32)
    offset = rng.normal(0, style.cell_offset_sd, n_cells).astype(np.float32)
    substrate = style.substrate_amp * _smooth_noise(rng, shape, 6.0)  # empty substrate: flat, smooth
    nucleolus_jitter = rng.normal(0, 1.0, (2, n_cells))
    n_specks = int(rng.integers(5, 25))
    speck_ys = rng.uniform(0, _H2, n_specks)
    speck_xs = rng.uniform(0, _W2, n_specks)
    speck_amp = rng.choice([-1.0, 1.0], n_specks) * rng.uniform(*style.debris_amp, n_specks)
    # A few mitotic cells occur in every healthy culture, whatever the label.
    n_mitotic = int(rng.integers(0, 4))
    rng = cpe_rng  # from here on: what the kind adds
    if kind == "mitotic":
        n_mitotic = int(rng.integers(10, 30))
    if kind == "mixed":  # a bit of every benign look at once
        n_mitotic = int(rng.integers(5, 15))
    if kind in ("subconfluent", "mixed"):
        holes = _smooth_noise(rng, (24, 32), 2.0)
        hy = np.clip((seeds_y / _H2 * 24).astype(int), 0, 23)
        hx = np.clip((seeds_x / _W2 * 32).astype(int), 0, 31)
        frac = rng.uniform(0.05, 0.25) if kind == "subconfluent" else rng.uniform(0.03, 0.12)
        values = holes[hy, hx]
        state[values > np.quantile(values, 1 - frac)] = _ABSENT
    if kind == "trypsin":
        state[:] = _CONTRACT
        gap[:] = rng.uniform(0.7, 1.4, n_cells)
    if kind == "mixed":
        mild = (state == _NORMAL) & (rng.random(n_cells) < rng.uniform(0.2, 0.6))
        state[mild] = _CONTRACT
        gap[mild] = rng.uniform(0.6, 1.1, int(mild.sum()))
    if kind == "dense_patch":  # piled-up, brighter, more textured patches of small cells
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(0, _H2), rng.uniform(0, _W2)
            inside = np.hypot(seeds_y - cy, seeds_x - cx) < spacing * rng.uniform(3.0, 7.0)
            offset[inside] += rng.uniform(0.05, 0.14)
            nuc_y[inside] = seeds_y[inside] + rng.normal(0, 0.3 * spacing, int(inside.sum()))
            nuc_x[inside] = seeds_x[inside] + rng.normal(0, 0.3 * spacing, int(inside.sum()))
    if kind == INFLUENZA:
        state, t = _influenza_states(rng, seeds_y, seeds_x, severity, hpi, spacing, style)
        # Contraction gap grows towards the focus centre.
        gap[:] = np.where(state == _CONTRACT, np.clip(1.0 + 6.0 * np.maximum(t, 0), 1.0, 3.5), 0.0)
    if kind == "syncytia":
        n_syn = int(rng.integers(2, 5))
        for k in range(n_syn):
            cy, cx = rng.uniform(40, _H2 - 40), rng.uniform(40, _W2 - 40)
            radius = spacing * rng.uniform(1.8, 3.2)
            d = np.hypot(seeds_y - cy, seeds_x - cx)
            members = (d < radius * (1 + 0.15 * rng.standard_normal(n_cells))) & (syncytium < 0)
            syncytium[members] = k
            pull = rng.uniform(0.25, 0.45)
            nuc_y[members] = cy + pull * (seeds_y[members] - cy) + rng.normal(0, 1.0, members.sum())
            nuc_x[members] = cx + pull * (seeds_x[members] - cx) + rng.normal(0, 1.0, members.sum())

    normal_like = (state == _NORMAL) | (state == _CONTRACT)
    if n_mitotic:
        candidates = np.flatnonzero(
            (state == _NORMAL) & (syncytium < 0)
            & (seeds_y > 0) & (seeds_y < _H2) & (seeds_x > 0) & (seeds_x < _W2)
        )
        chosen = rng.choice(candidates, size=min(n_mitotic, candidates.size), replace=False)
        state[chosen] = _MITOTIC
        normal_like[chosen] = False

    # Per-pixel lookups.
    st = state[idx1]
    st2 = state[idx2]
    syn1 = syncytium[idx1]
    syn2 = syncytium[idx2]
    img = substrate.copy()
    # Cytoplasm of attached cells (normal / contracted / syncytial).
    g = gap[idx1]
    # Mitotic cells keep their footprint (cytoplasm, no nucleus) under the rounded cell.
    attached = (st == _NORMAL) | (st == _CONTRACT) | (st == _MITOTIC)
    cyto = style.cyto_level + offset[idx1] + style.texture_amp * tex
    in_syn = syn1 >= 0
    cyto = np.where(in_syn, -0.085 + 0.03 * tex, cyto)
    body = attached & (border >= g)
    img = np.where(body, cyto, img)
    # Borders: dark line between attached cells, none inside a syncytium, bright edge next to
    # an empty neighbour or around a contraction gap.
    inner_syn = in_syn & (syn1 == syn2)
    line_w = np.where(in_syn & ~inner_syn, 1.3, style.border_width)
    dark = style.border_amp * np.exp(-((border / line_w) ** 2))
    empty_neighbour = (st2 == _ABSENT) | (st2 == _DETACHED)
    contracted = g > 0
    img += np.where(attached & ~inner_syn & ~contracted & ~empty_neighbour, dark, 0.0)
    edge = style.edge_amp * np.exp(-(((border - g) / 0.75) ** 2))
    img += np.where(attached & (contracted | empty_neighbour), edge, 0.0)

    # Nuclei (darker discs) and nucleoli (bright dots) of attached cells.
    weights = normal_like.astype(np.float32)
    sigma_n = 0.17 * spacing
    blob = _splat(shape, nuc_y, nuc_x, weights, sigma_n)
    nucleus = np.clip((blob - 0.35) * 3.0, 0.0, 1.0)
    n1y = nuc_y + 0.2 * sigma_n * nucleolus_jitter[0]
    n1x = nuc_x + 0.2 * sigma_n * nucleolus_jitter[1]
    nucleoli = _splat(shape, n1y, n1x, weights, 0.7)
    img += np.where(attached, style.nucleus_amp * nucleus + style.nucleolus_amp * nucleoli, 0.0)

    # Influenza: rounded, shrunken, granular cells with a bright halo, on empty substrate.
    rr = round_r[idx1]
    is_round = st == _ROUND
    inside = np.clip(rr + 0.5 - d1, 0.0, 1.0)
    round_body = style.round_body + style.round_granularity * gran
    img = np.where(is_round, img * (1 - inside) + inside * round_body, img)
    img += np.where(
        is_round,
        style.round_halo * np.exp(-(((d1 - rr - 0.7) / 0.9) ** 2))
        + style.round_dark_rim * np.exp(-(((d1 - rr + 0.8) / 0.7) ** 2)),
        0.0,
    )

    # Mitotic cells: larger, smooth, bright, isolated.
    mit = np.flatnonzero(state == _MITOTIC)
    if mit.size:
        _draw_spheres(img, seeds_y[mit], seeds_x[mit], rng.uniform(4.8, 6.0, mit.size),
                      body=style.mitotic_body, halo=style.mitotic_halo, dark_rim=-0.15, glow=0.15)

    # Debris: small bright/dark specks in detached areas (influenza) or spread uniformly.
    debris_weight = np.zeros(shape, np.float32)
    ys, xs, amp = speck_ys, speck_xs, speck_amp
    if kind in ("debris", "mixed"):
        n_extra = int(rng.integers(250, 700)) if kind == "debris" else int(rng.integers(80, 250))
        ys = np.concatenate([ys, rng.uniform(0, _H2, n_extra)])
        xs = np.concatenate([xs, rng.uniform(0, _W2, n_extra)])
        amp = np.concatenate([amp, rng.choice([-1.0, 1.0], n_extra) * rng.uniform(*style.debris_amp, n_extra)])
    if kind == INFLUENZA:
        det = np.flatnonzero((state == _DETACHED) | (state == _ROUND))
        if det.size:
            per = int(rng.integers(*style.debris_per_cell))
            pick = np.repeat(det, per)
            ys = np.concatenate([ys, seeds_y[pick] + rng.normal(0, 0.45 * spacing, pick.size)])
            xs = np.concatenate([xs, seeds_x[pick] + rng.normal(0, 0.45 * spacing, pick.size)])
            amp = np.concatenate([amp, rng.choice([-1.0, 1.0], pick.size) * rng.uniform(*style.debris_amp, pick.size)])
    debris_weight += _splat(shape, ys, xs, amp, 0.8)
    img += debris_weight

    # Grape-like clusters of large swollen round cells on an intact monolayer.
    if kind == "grape_cluster":
        for _ in range(int(rng.integers(1, 4))):
            center = (rng.uniform(50, _H2 - 50), rng.uniform(50, _W2 - 50))
            r = rng.uniform(6.0, 7.5)
            pts = _poisson_disc_cluster(rng, center, int(rng.integers(10, 26)),
                                        radius=rng.uniform(3.5, 5.0) * r, min_dist=1.85 * r)
            _draw_spheres(img, pts[:, 0], pts[:, 1], rng.uniform(0.85, 1.1, len(pts)) * r,
                          body=style.grape_body, halo=style.grape_halo, dark_rim=-0.35,
                          glow=style.grape_glow,
                          granular=tex, gain=0.03)

    # Where influenza CPE is (contracted, rounded or detached cells); its mean is the area fraction.
    if kind == INFLUENZA:
        cpe = (st == _CONTRACT) | (st == _ROUND) | (st == _DETACHED)
    else:
        cpe = np.zeros(shape, dtype=bool)
    return img.astype(np.float32), cpe


# --------------------------------------------------------------------------------------------
# Optics, camera, file format


def _to_pixels(rng: np.random.Generator, scene: NDArray[np.float32], style: Style = Style()):
    """Label-independent nuisances: exposure, illumination, blur, noise, dust, bit depth."""
    # Equalise intensity statistics: scene mean/std -> targets drawn from the nuisance stream.
    z = (scene - scene.mean()) / (scene.std() + 1e-6)
    exposure = rng.uniform(*style.exposure)  # mean signal as a fraction of full scale
    contrast = rng.uniform(*style.contrast)
    z = np.repeat(np.repeat(z, 2, axis=0), 2, axis=1)
    # Optics: PSF + occasional defocus.
    defocus = float(rng.choice([0.0, rng.uniform(*style.defocus)],
                               p=[1 - style.defocus_p, style.defocus_p]))
    z = ndimage.gaussian_filter(z, 0.9 + defocus, truncate=3.0)
    # Dust on optics: faint blurred rings and dark specks (before illumination shading).
    for _ in range(int(rng.integers(0, 5))):
        _dust(rng, z)
    signal = exposure * (1.0 + contrast * z)
    # Illumination: linear gradient and vignetting.
    y = np.linspace(-1, 1, HEIGHT, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, WIDTH, dtype=np.float32)[None, :]
    gy, gx = rng.uniform(-style.gradient, style.gradient, 2)
    vignette = rng.uniform(0.0, style.vignette)
    cy, cx = rng.uniform(-0.3, 0.3, 2)
    shading = 1.0 + gy * y + gx * x - vignette * 0.5 * ((y - cy) ** 2 + (x - cx) ** 2)
    signal *= shading
    if style.gamma != 1.0:  # camera / display gamma, applied about the exposure level
        signal = exposure * (np.maximum(signal, 0.0) / exposure) ** np.float32(style.gamma)
    # Camera: shot noise (Gaussian approximation of Poisson) + read noise.
    full_well = rng.uniform(*style.full_well)  # electrons at full scale
    read = rng.uniform(*style.read_noise)
    sd = np.sqrt(np.maximum(signal, 0.0) / full_well + read * read)
    signal += sd * rng.standard_normal(signal.shape, dtype=np.float32)
    if style.row_noise:  # line-wise offset noise of CMOS sensors
        signal += (style.row_noise * exposure) * rng.standard_normal((HEIGHT, 1), dtype=np.float32)
    bit_depth = int(rng.choice(BIT_DEPTHS, p=list(style.bit_depth_p)))
    top = (1 << bit_depth) - 1
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    pixels = np.clip(np.rint(signal * top), 0, top).astype(dtype)
    # Orientation: flips and 180 degree rotation.
    if rng.random() < 0.5:
        pixels = pixels[::-1, ::-1]
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    nuisance = {"bit_depth": bit_depth, "exposure": round(exposure, 4),
                "defocus_sigma": round(defocus, 3)}
    return np.ascontiguousarray(pixels), nuisance


def _dust(rng: np.random.Generator, z: NDArray[np.float32]) -> None:
    y, x = rng.uniform(0, HEIGHT), rng.uniform(0, WIDTH)
    if rng.random() < 0.5:  # out-of-focus dust: a soft ring
        r = rng.uniform(10, 40)
        amp, width = rng.uniform(-1.0, 1.0), rng.uniform(2, 6)
    else:  # in-focus speck: a small dark blob
        r = 0.0
        amp, width = -rng.uniform(1.5, 4.0), rng.uniform(1.5, 4)
    pad = int(r + 3 * width) + 1
    y0, y1 = max(int(y) - pad, 0), min(int(y) + pad + 1, HEIGHT)
    x0, x1 = max(int(x) - pad, 0), min(int(x) + pad + 1, WIDTH)
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] - y
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] - x
    d = np.sqrt(yy * yy + xx * xx)
    z[y0:y1, x0:x1] += amp * np.exp(-(((d - r) / width) ** 2))


# --------------------------------------------------------------------------------------------
# Public API


def generate(
    seed: int,
    kind: str,
    severity: int = 0,
    hpi: int | None = None,
    family: str = V1,
) -> tuple[NDArray[np.uint8] | NDArray[np.uint16], dict[str, Any]]:
    """One (1024, 1360) image and its record; deterministic in (seed, family, kind, severity, hpi).

    `severity` must be 1-4 for `influenza` and 0 otherwise. `hpi` defaults to a value drawn
    consistently with the severity (for influenza) or uniformly (mock-infected wells).
    `family` picks the rendering family (`training.families`); `v1` reproduces generator 1.0
    byte for byte.
    """
    pixels, record, _ = generate_with_mask(seed, kind, severity, hpi, family)
    return pixels, record


def generate_with_mask(
    seed: int,
    kind: str,
    severity: int = 0,
    hpi: int | None = None,
    family: str = V1,
) -> tuple[NDArray[np.uint8] | NDArray[np.uint16], dict[str, Any], NDArray[np.bool_]]:
    """`generate`, plus where the CPE is: a (1024, 1360) mask of the contracted, rounded and
    detached cells (all False for every kind but influenza), to score explanations against."""
    label = label_of(kind)
    if kind == INFLUENZA and severity not in (1, 2, 3, 4):
        raise ValueError("influenza images need severity 1-4")
    if kind != INFLUENZA and severity != 0:
        raise ValueError(f"{kind} images have severity 0")
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if family == V1:
        seq = np.random.SeedSequence([int(seed), 0x5EED, int(_V1_SEED_VERSION.replace(".", ""))])
        scene_seq, nuisance_seq, meta_seq, cpe_seq = seq.spawn(4)
        style = draw_style(V1, np.random.default_rng(0))
    else:
        version = int(GENERATOR_VERSION.replace(".", ""))
        seq = np.random.SeedSequence([int(seed), 0x5EED, version, FAMILIES.index(family)])
        scene_seq, nuisance_seq, meta_seq, cpe_seq, style_seq = seq.spawn(5)
        style = draw_style(family, np.random.default_rng(style_seq))
    if hpi is None:
        hpi = _draw_hpi(np.random.default_rng(meta_seq), severity)
    if hpi not in HPI_VALUES:
        raise ValueError(f"hpi must be one of {HPI_VALUES}")
    scene, cpe = _render_scene(
        np.random.default_rng(scene_seq), np.random.default_rng(cpe_seq), kind, severity, hpi, style
    )
    pixels, nuisance = _to_pixels(np.random.default_rng(nuisance_seq), scene, style)
    record = {
        "hpi": int(hpi),
        "severity": int(severity),
        "kind": kind,
        "label": label,
        "seed": int(seed),
        "generator_version": GENERATOR_VERSION,
        "family": family,
        "cpe_fraction": round(float(cpe.mean()), 4),
        **nuisance,
    }
    return pixels, record, np.repeat(np.repeat(cpe, 2, axis=0), 2, axis=1)


def _draw_hpi(rng: np.random.Generator, severity: int) -> int:
    if severity == 0:
        return int(rng.choice(HPI_VALUES))
    # P(hpi | severity) from P(severity | hpi) with a uniform hpi prior.
    weights = np.array([SEVERITY_GIVEN_HPI[h][severity] for h in HPI_VALUES])
    return int(rng.choice(HPI_VALUES, p=weights / weights.sum()))


def well_name(index: int) -> str:
    return f"{_ROWS[(index // _COLS) % len(_ROWS)]}{index % _COLS + 1:02d}"


def make_plan(
    split: str,
    count: int,
    mix: dict[str, float] | None = None,
    families: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The rows (plate, well, site, family, kind, severity, hpi, seed) of a deterministic set.

    Kind and hpi are per well (3 sites per well); influenza severity is drawn per site from
    P(severity | hpi). Seeds are SPLIT_SEED_BASE[split] + row index. Without `families` this
    is generator 1.0's plan (v1 family, DEFAULT_MIX); with them, wells are dealt to the
    families in turn (so each family gets every kind) and the mix defaults to MIX_V2.
    """
    if families is not None:
        return _make_plan_v2(split, count, mix, tuple(families))
    if split not in SPLIT_SEED_BASE:
        raise ValueError(f"split must be one of {tuple(SPLIT_SEED_BASE)}")
    if not 0 < count <= SPLIT_SIZE_LIMIT:
        raise ValueError("count out of range")
    mix = dict(DEFAULT_MIX if mix is None else mix)
    rng = np.random.default_rng([SPLIT_SEED_BASE[split], count, 0x91A7])
    n_wells = math.ceil(count / _SITES_PER_WELL)
    kinds_all = list(mix)
    quotas = np.array([mix[k] for k in kinds_all], float)
    quotas = quotas / quotas.sum() * n_wells
    counts = np.floor(quotas).astype(int)
    for i in np.argsort(-(quotas - counts))[: n_wells - counts.sum()]:
        counts[i] += 1
    well_kinds = np.repeat(kinds_all, counts)
    rng.shuffle(well_kinds)
    hpis = np.tile(HPI_VALUES, math.ceil(n_wells / 3))[:n_wells]
    rng.shuffle(hpis)
    base = SPLIT_SEED_BASE[split]
    rows = []
    for i in range(count):
        w, site = divmod(i, _SITES_PER_WELL)
        kind = str(well_kinds[w])
        hpi = int(hpis[w])
        severity = 0
        if kind == INFLUENZA:
            probs = SEVERITY_GIVEN_HPI[hpi]
            severity = int(rng.choice(list(probs), p=list(probs.values())))
        rows.append({
            "plate": f"{split.upper()}-P{w // 96 + 1:02d}",
            "well": well_name(w % 96),
            "site": site + 1,
            "hpi": hpi,
            "severity": severity,
            "kind": kind,
            "label": label_of(kind),
            "seed": base + i,
            "generator_version": GENERATOR_VERSION,
            "family": V1,
        })
    return rows


def _make_plan_v2(split: str, count: int, mix: dict[str, float] | None,
                  families: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per family, a v1-style plan of its share of the wells; rows interleaved by well."""
    unknown = set(families) - set(FAMILIES)
    if unknown or not families:
        raise ValueError(f"families must be a non-empty subset of {FAMILIES}")
    mix = dict(MIX_V2 if mix is None else mix)
    per_family = [count // len(families) + (i < count % len(families)) for i in range(len(families))]
    plans = []
    for index, (family, n) in enumerate(zip(families, per_family)):
        rows = make_plan(split, n, mix) if n else []
        for row in rows:
            row["family"] = family
        plans.append(rows)
    # Seeds: unique across the set (family index interleaved), inside the split's range.
    out = []
    while any(plans):
        for rows in plans:
            if rows:
                out.extend(rows[:_SITES_PER_WELL])
                del rows[:_SITES_PER_WELL]
    base = SPLIT_SEED_BASE[split]
    for i, row in enumerate(out):
        w, site = divmod(i, _SITES_PER_WELL)
        row.update({
            "plate": f"{split.upper()}-P{w // 96 + 1:02d}",
            "well": well_name(w % 96),
            "site": site + 1,
            "seed": base + i,
        })
    return out


def generate_row(row: dict[str, Any]):
    """Generate the image of one plan row (picklable, for multiprocessing)."""
    pixels, record = generate(row["seed"], row["kind"], row["severity"], row["hpi"],
                              row.get("family", V1))
    return pixels, {**row, **record}


def iter_set(rows: Sequence[dict[str, Any]], processes: int = 1) -> Iterator:
    """Yield (pixels, record) for each row, in order, optionally with a process pool."""
    if processes <= 1:
        yield from map(generate_row, rows)
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        yield from pool.imap(generate_row, rows, chunksize=4)


def write_manifest(
    path: Path, records: Sequence[dict[str, Any]], extra_columns: Sequence[str] = ()
) -> None:
    """CSV with MANIFEST_COLUMNS, then file/bit_depth/cpe_fraction and `extra_columns`."""
    columns = list(MANIFEST_COLUMNS) + [
        c for c in (*_EXTRA_MANIFEST_COLUMNS, *extra_columns) if any(c in r for r in records)
    ]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)


def read_manifest(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--split", choices=tuple(SPLIT_SEED_BASE), default="test")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--families", default="v1",
                        help=f"comma-separated subset of {','.join(FAMILIES)}, or 'all'")
    args = parser.parse_args(argv)
    import tifffile

    args.out.mkdir(parents=True, exist_ok=True)
    families = FAMILIES if args.families == "all" else tuple(args.families.split(","))
    rows = make_plan(args.split, args.count) if families == (V1,) else make_plan(
        args.split, args.count, families=families)
    records = []
    start = time.perf_counter()
    for pixels, record in iter_set(rows, args.processes):
        name = f"{record['plate']}_{record['well']}_s{record['site']}.tif"
        tifffile.imwrite(args.out / name, pixels, compression="zlib")
        records.append({**record, "file": name})
    write_manifest(args.out / "manifest.csv", records)
    elapsed = time.perf_counter() - start
    print(f"wrote {len(records)} images + manifest.csv to {args.out} in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
