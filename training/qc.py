"""Out-of-distribution and image-quality gate, computed inside the exported graph.

A classifier trained on phase-contrast monolayers answers confidently on anything (v1 called
fluorescence nuclei "infected" with p=0.99999). The gate gives every backend the same extra
outputs next to `probabilities`, and metadata.json's `qc` block says how to read them, so the
service needs no model-specific code:

* `ood_score`: Mahalanobis distance of the penultimate (last Dense(100)) features to the
  nearest class-conditional training mean, shared covariance (Lee et al. 2018).
* `focus_score`: variance of the Laplacian of the normalised image (2x binned); low = blurred.
* `saturated_fraction`: fraction of pixels at the image's own maximum raw value.
* `texture_score`: cell-scale band-pass contrast (difference of Gaussians, std / mean raw
  intensity): ~0 for an empty field, ~0.05-0.3 for a phase-contrast monolayer, large for
  fluorescence (dark background, bright objects).
* `spectral_ratio`: band-pass energy at cell-border scale (DoG 1-2 px) over cell scale (DoG
  3-6 px) of the 2x-binned normalised image; low for smooth natural photos and textures.
* `empty_tile_fraction`: fraction of an 8 x 8 grid of tiles whose cell-scale band-pass energy
  is below 0.2 x the median tile's; a monolayer fills the field, photos have sky and background.
* `bright_fraction`: fraction of normalised pixels above 0.9 (large bright areas: paper, stains).

Thresholds are measured on held-out in-distribution images (`calibrate_checks`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

QC_OUTPUTS = ("ood_score", "focus_score", "saturated_fraction", "texture_score",
              "spectral_ratio", "empty_tile_fraction", "bright_fraction")
#: (reason, output, direction): direction "above" flags high values, "below" low values.
CHECKS = (
    ("out_of_distribution", "ood_score", "above"),
    ("out_of_focus", "focus_score", "below"),
    ("saturated", "saturated_fraction", "above"),
    ("empty_field", "texture_score", "below"),
    ("not_phase_contrast", "texture_score", "above"),
    ("not_a_monolayer", "spectral_ratio", "below"),
    ("non_uniform_field", "empty_tile_fraction", "above"),
    ("bright_regions", "bright_fraction", "above"),
)
_TILES = 8  # empty_tile_fraction: an 8 x 8 grid of tiles
BIT_DEPTHS = (8, 12, 16)
_SHRINKAGE = 0.05


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Class means and the shrunk shared precision matrix of (N, D) training features."""
    features = np.asarray(features, np.float64)
    classes = np.unique(labels)
    means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    centred = features - means[np.searchsorted(classes, labels)]
    cov = centred.T @ centred / max(len(features) - len(classes), 1)
    d = cov.shape[0]
    cov = (1 - _SHRINKAGE) * cov + (_SHRINKAGE * np.trace(cov) / d + 1e-6) * np.eye(d)
    return {"means": means.astype(np.float32), "precision": np.linalg.inv(cov).astype(np.float32)}


def mahalanobis_numpy(features: np.ndarray, gate: Mapping[str, np.ndarray]) -> np.ndarray:
    """Reference implementation of the in-graph ood_score (for tests)."""
    diff = features[:, None, :] - gate["means"][None]
    q = np.einsum("ncd,de,nce->nc", diff, gate["precision"], diff)
    return np.sqrt(np.maximum(q.min(axis=1), 0.0))


def ood_score(features, means, precision):
    """In-graph Mahalanobis distance to the nearest class mean: (N, D) -> (N,)."""
    import tensorflow as tf

    diff = features[:, None, :] - means[None]  # (N, C, D)
    q = tf.einsum("ncd,de,nce->nc", diff, precision, diff)
    return tf.sqrt(tf.maximum(tf.reduce_min(q, axis=1), 0.0))


def _gaussian_kernel(sigma: float):
    radius = int(3 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur(images, sigma: float):
    import tensorflow as tf

    k = _gaussian_kernel(sigma)
    ky = tf.constant(k.reshape(-1, 1, 1, 1))
    kx = tf.constant(k.reshape(1, -1, 1, 1))
    out = tf.nn.conv2d(images, ky, 1, "VALID")
    return tf.nn.conv2d(out, kx, 1, "VALID")


def _blur_same(images, sigma: float):
    """Separable Gaussian blur with reflected borders (same size, like scipy's default)."""
    import tensorflow as tf

    k = _gaussian_kernel(sigma)
    r = len(k) // 2
    padded = tf.pad(images, [[0, 0], [r, r], [r, r], [0, 0]], mode="REFLECT")
    out = tf.nn.conv2d(padded, tf.constant(k.reshape(-1, 1, 1, 1)), 1, "VALID")
    return tf.nn.conv2d(out, tf.constant(k.reshape(1, -1, 1, 1)), 1, "VALID")


def field_measures(normalised) -> dict[str, Any]:
    """In-graph spectral ratio, empty-tile and bright fractions of a normalised batch."""
    import tensorflow as tf

    b = tf.nn.avg_pool2d(normalised, 2, 2, "VALID")
    blurred = {s: _blur_same(b, s) for s in (1.0, 1.5, 2.0, 3.0, 6.0)}
    fine = tf.reduce_mean(tf.square(blurred[1.0] - blurred[2.0]), axis=[1, 2, 3])
    cell = tf.reduce_mean(tf.square(blurred[3.0] - blurred[6.0]), axis=[1, 2, 3])
    energy = tf.square(blurred[1.5] - blurred[6.0])
    h, w = int(energy.shape[1]) // _TILES, int(energy.shape[2]) // _TILES
    tiles = tf.nn.avg_pool2d(energy[:, : h * _TILES, : w * _TILES, :], [h, w], [h, w], "VALID")
    tiles = tf.reshape(tiles, [-1, _TILES * _TILES])
    ordered = tf.sort(tiles, axis=1)
    median = 0.5 * (ordered[:, _TILES * _TILES // 2 - 1] + ordered[:, _TILES * _TILES // 2])
    empty = tf.reduce_mean(tf.cast(tiles < 0.2 * median[:, None], tf.float32), axis=1)
    return {
        "spectral_ratio": fine / tf.maximum(cell, 1e-12),
        "empty_tile_fraction": empty,
        "bright_fraction": tf.reduce_mean(tf.cast(normalised > 0.9, tf.float32), axis=[1, 2, 3]),
    }


def quality_measures(raw, normalised) -> dict[str, Any]:
    """In-graph focus, saturation and texture measures of an (N, H, W, 1) batch."""
    import tensorflow as tf

    raw = tf.cast(raw, tf.float32)
    binned = tf.nn.avg_pool2d(normalised, 2, 2, "VALID")
    lap = tf.constant(np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32).reshape(3, 3, 1, 1))
    response = tf.nn.conv2d(binned, lap, 1, "VALID")
    focus = tf.math.reduce_variance(response, axis=[1, 2, 3])
    peak = tf.reduce_max(raw, axis=[1, 2, 3], keepdims=True)
    saturated = tf.reduce_mean(tf.cast(raw >= peak, tf.float32), axis=[1, 2, 3])
    raw_binned = tf.nn.avg_pool2d(raw, 2, 2, "VALID")
    fine = _blur(raw_binned, 1.5)
    coarse = _blur(raw_binned, 6.0)
    crop = (coarse.shape[1] is not None and fine.shape[1] is not None)
    offset = (int(fine.shape[1]) - int(coarse.shape[1])) // 2 if crop else 0
    if offset:
        fine = fine[:, offset:-offset, offset:-offset, :]
    band = fine - coarse
    mean = tf.reduce_mean(raw, axis=[1, 2, 3])
    texture = tf.math.reduce_std(band, axis=[1, 2, 3]) / tf.maximum(mean, 1e-6)
    return {"focus_score": focus, "saturated_fraction": saturated, "texture_score": texture,
            **field_measures(normalised)}


def calibrate_checks(
    values: Mapping[str, np.ndarray], margin: float = 1.1, reject_factor: float = 2.0
) -> list[dict[str, Any]]:
    """Warn just beyond the extremes of held-out in-distribution values; reject further out.

    Warn: max * margin (above) or min / margin (below), so no calibration image is flagged
    and an independent in-distribution set is flagged rarely. Reject: reject_factor times
    further from the in-distribution range.
    """
    checks = []
    for reason, output, direction in CHECKS:
        v = np.asarray(values[output], np.float64)
        if direction == "above":
            warn = float(v.max() * margin)
            check = {"warn_above": warn, "reject_above": warn * reject_factor}
        else:
            warn = float(v.min() / margin)
            check = {"warn_below": warn, "reject_below": warn / reject_factor}
        checks.append({"reason": reason, "output": output,
                       **{k: float(f"{x:.6g}") for k, x in check.items()}})
    return checks


def apply_checks(checks: Sequence[Mapping[str, Any]], outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Per image: 'ok' / 'warn' / 'reject' and the reasons, as the service would decide."""
    n = len(next(iter(outputs.values())))
    status = np.zeros(n, int)  # 0 ok, 1 warn, 2 reject
    reasons: list[list[str]] = [[] for _ in range(n)]
    for check in checks:
        v = np.asarray(outputs[check["output"]], np.float64)
        level = np.zeros(n, int)
        if "warn_above" in check:
            level = np.where(v > check["warn_above"], 1, 0)
            level = np.where(v > check["reject_above"], 2, level)
        if "warn_below" in check:
            level = np.maximum(level, np.where(v < check["warn_below"], 1, 0))
            level = np.maximum(level, np.where(v < check["reject_below"], 2, 0))
        for i in np.flatnonzero(level):
            reasons[i].append(check["reason"])
        status = np.maximum(status, level)
    names = np.array(["ok", "warn", "reject"])[status]
    return {"status": names.tolist(), "reasons": reasons}


def qc_block(checks: list[dict[str, Any]], flag_rate: float, n: int, rejected: dict[str, Any]) -> dict[str, Any]:
    """metadata.json's generic `qc` block."""
    return {
        "checks": checks,
        "bit_depths": list(BIT_DEPTHS),
        "calibration": {
            "in_distribution_flag_rate": round(flag_rate, 4),
            "n": n,
            "method": "warn just beyond the extremes of held-out validation images of the "
                      "training families; flag rate measured on the independent test split",
        },
        "non_phase_contrast": rejected,
    }
