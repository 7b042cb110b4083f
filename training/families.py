"""Rendering families of the synthetic generator (v2): named, domain-randomised styles.

A model that has only seen one renderer learns the renderer (issue #14: 99% on its own
generator, 63% on an independent one). Generator v2 therefore draws every rendering choice --
border polarity and width, cell size and density, cytoplasm texture, nucleus visibility, the
look of rounded and detached cells, plaque rims, debris, optics, camera noise, gamma, bit depth
-- from ranges, and groups the ranges into a few *named families* that differ in kind, so a
leave-one-family-out run (`training.lofo`) can measure generalisation to an unseen renderer.

`v1` is the original generator: its `Style()` defaults are v1's constants, and it draws
nothing, so v1 images stay byte-identical.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

V1 = "v1"


@dataclass(frozen=True)
class Style:
    """Every rendering constant of the scene and camera model (defaults: generator v1)."""

    # Monolayer geometry (half-resolution pixels).
    spacing: tuple[int, int] = (14, 20)
    regularity: tuple[float, float] = (0.55, 0.8)
    # Cytoplasm, substrate.
    cyto_level: float = -0.10
    cell_offset_sd: float = 0.035
    texture_amp: float = 0.05
    texture_sigma: float = 1.2
    substrate_amp: float = 0.02
    # Cell borders: negative amplitude = dark lines, positive = bright phase halos.
    border_amp: float = -0.45
    border_width: float = 0.85
    edge_amp: float = 0.40
    # Nuclei and nucleoli.
    nucleus_amp: float = -0.11
    nucleolus_amp: float = 0.22
    # Influenza CPE: rounded cells, plaque outline, detachment, debris.
    round_radius: tuple[float, float] = (2.6, 4.4)
    round_body: float = 0.10
    round_granularity: float = 0.22
    round_halo: float = 0.95
    round_dark_rim: float = -0.3
    plaque_wobble: float = 0.12
    plaque_ragged: float = 0.0
    detach_shift: float = 0.0
    debris_per_cell: tuple[int, int] = (2, 5)
    debris_amp: tuple[float, float] = (0.3, 0.8)
    # Mitotic cells and grape-like clusters (spheres).
    mitotic_body: float = 0.35
    mitotic_halo: float = 0.75
    grape_body: float = -0.12
    grape_halo: float = 0.6
    grape_glow: float = 0.30
    # Optics and camera.
    exposure: tuple[float, float] = (0.22, 0.55)
    contrast: tuple[float, float] = (0.10, 0.18)
    defocus_p: float = 0.5
    defocus: tuple[float, float] = (0.3, 2.2)
    gradient: float = 0.12
    vignette: float = 0.25
    full_well: tuple[float, float] = (3_000.0, 30_000.0)
    read_noise: tuple[float, float] = (0.001, 0.006)
    bit_depth_p: tuple[float, float, float] = (0.4, 0.35, 0.25)
    gamma: float = 1.0
    row_noise: float = 0.0


#: Ranges per family: a field name -> (low, high) draws uniformly; a tuple-of-ranges field
#: draws each end. Anything not listed keeps the v1 default.
_FAMILY_RANGES: dict[str, dict[str, Any]] = {
    # Bright phase halos at cell borders, nuclei nearly invisible, big halos round CPE cells,
    # strong vignetting and gamma.
    "halo": {
        "border_amp": (0.25, 0.55), "border_width": (0.9, 1.6), "edge_amp": (0.5, 0.9),
        "nucleus_amp": (-0.04, 0.0), "nucleolus_amp": (0.0, 0.08), "texture_amp": (0.02, 0.05),
        "round_halo": (1.1, 1.7), "round_body": (-0.05, 0.15), "round_dark_rim": (-0.5, -0.2),
        "mitotic_halo": (0.9, 1.4), "grape_halo": (0.8, 1.3), "grape_body": (-0.05, 0.1),
        "vignette": (0.2, 0.45), "gamma": (0.75, 1.3), "plaque_ragged": (0.0, 0.08),
    },
    # Small dense cells, thick dark borders, grainy cytoplasm; CPE as dark granular contracted
    # cells with little halo and ragged plaque rims; noisy 8-bit cameras.
    "granular": {
        "spacing_lo": (10, 12), "spacing_hi": (13, 16), "border_amp": (-0.7, -0.4),
        "border_width": (1.0, 1.5), "texture_amp": (0.07, 0.13), "texture_sigma": (0.7, 1.0),
        "round_body": (-0.25, -0.08), "round_granularity": (0.3, 0.5), "round_halo": (0.15, 0.45),
        "round_radius_lo": (2.2, 2.8), "round_radius_hi": (3.2, 4.0), "round_dark_rim": (-0.4, 0.0),
        "plaque_ragged": (0.08, 0.2), "edge_amp": (0.15, 0.35), "full_well": (800.0, 4_000.0),
        "bit_depth_p": (0.8, 0.15, 0.05), "debris_per_cell_hi": (4, 8),
    },
    # Large flat cells with visible nuclei; CPE mostly detachment leaving bare substrate with
    # smooth rims and debris; frequent defocus, strong illumination gradients, 16-bit.
    "detach": {
        "spacing_lo": (18, 21), "spacing_hi": (22, 27), "nucleus_amp": (-0.25, -0.12),
        "nucleolus_amp": (0.15, 0.35), "border_amp": (-0.4, -0.15), "border_width": (0.7, 1.1),
        "texture_amp": (0.02, 0.06), "detach_shift": (-0.35, -0.15), "plaque_wobble": (0.02, 0.08),
        "round_halo": (0.5, 1.0), "round_radius_lo": (3.0, 3.8), "round_radius_hi": (4.6, 5.6),
        "debris_per_cell_hi": (5, 9), "defocus_p": (0.6, 0.8), "gradient": (0.15, 0.3),
        "bit_depth_p": (0.1, 0.3, 0.6), "substrate_amp": (0.02, 0.06),
    },
    # Faint thin borders, low global contrast, gamma far from 1, row noise, 12-bit mostly.
    "faint": {
        "border_amp": (-0.3, 0.3), "border_width": (0.5, 0.8), "contrast": (0.05, 0.12),
        "exposure_lo": (0.3, 0.45), "exposure_hi": (0.55, 0.75), "gamma": (0.55, 1.7),
        "nucleus_amp": (-0.15, -0.03), "round_halo": (0.6, 1.2), "round_body": (0.0, 0.2),
        "defocus_p": (0.3, 0.6), "defocus_lo": (0.2, 0.4), "defocus_hi": (0.8, 1.6),
        "row_noise": (0.002, 0.012), "bit_depth_p": (0.2, 0.6, 0.2), "vignette": (0.1, 0.4),
        "plaque_ragged": (0.0, 0.12), "grape_halo": (0.3, 0.8), "mitotic_halo": (0.4, 0.9),
    },
}

FAMILIES: tuple[str, ...] = (V1, *_FAMILY_RANGES)
_PAIRS = {"spacing", "round_radius", "debris_per_cell", "exposure", "defocus", "full_well",
          "read_noise", "contrast", "regularity", "debris_amp"}


def draw_style(family: str, rng: np.random.Generator) -> Style:
    """The Style of one image of `family`; v1 draws nothing (byte-identical v1 images)."""
    if family == V1:
        return Style()
    if family not in _FAMILY_RANGES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    base = Style()
    values: dict[str, Any] = {}
    for name, spec in _FAMILY_RANGES[family].items():
        if name == "bit_depth_p" or name in _PAIRS:  # the range itself is the setting
            values[name] = tuple(spec)
            continue
        low, high = spec
        if isinstance(low, int) and isinstance(high, int):
            value: Any = int(rng.integers(low, high + 1))
        else:
            value = float(rng.uniform(low, high))
        field, _, end = name.rpartition("_")
        if end in ("lo", "hi") and field in _PAIRS:
            current = list(values.get(field, getattr(base, field)))
            current[0 if end == "lo" else 1] = value
            values[field] = tuple(current)
        else:
            values[name] = value
    return replace(base, **values)
