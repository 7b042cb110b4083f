"""Metrics for the CPE classifier on synthetic held-out sets, and a CLI for exported models.

``python -m training.evaluate --model model_repository/cpe_cnn/1 --count 400`` runs the exported
SavedModel's serving signature (the artefact that is actually served) on the test-seed set.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training import synthetic

POSITIVE = synthetic.LABELS[1]


def expected_calibration_error(p_infected: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    """Top-label ECE with equal-width confidence bins (Guo et al. 2017)."""
    p_infected = np.asarray(p_infected, float)
    predicted = p_infected >= 0.5
    confidence = np.where(predicted, p_infected, 1.0 - p_infected)
    correct = predicted == np.asarray(truth, bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


def _accuracy(correct: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    n = int(mask.sum())
    hits = int(correct[mask].sum())
    return {"n": n, "correct": hits, "accuracy": round(hits / n, 4) if n else None}


def compute_metrics(records: Sequence[dict[str, Any]], p_infected: Sequence[float]) -> dict[str, Any]:
    """Accuracy overall / per severity / per hpi / per kind, specificity groups, ECE."""
    p = np.asarray(p_infected, float)
    truth = np.array([r["label"] == POSITIVE for r in records])
    predicted = p >= 0.5
    correct = predicted == truth
    kind = np.array([r["kind"] for r in records])
    severity = np.array([int(r["severity"]) for r in records])
    hpi = np.array([int(r["hpi"]) for r in records])
    infected = truth
    n = len(records)
    metrics: dict[str, Any] = {
        "n_images": n,
        "accuracy": round(float(correct.mean()), 4),
        "errors": int((~correct).sum()),
        "sensitivity": round(float(predicted[infected].mean()), 4) if infected.any() else None,
        "specificity": round(float((~predicted[~infected]).mean()), 4) if (~infected).any() else None,
        "ece_10_bins": round(expected_calibration_error(p, truth, 10), 4),
        "log_loss": round(float(-np.mean(np.log(np.clip(np.where(truth, p, 1 - p), 1e-7, 1)))), 4),
        "per_severity": {str(s): _accuracy(correct, severity == s) for s in range(5)},
        "per_hpi_all": {str(h): _accuracy(correct, hpi == h) for h in synthetic.HPI_VALUES},
        "per_hpi_infected": {
            str(h): _accuracy(correct, (hpi == h) & infected) for h in synthetic.HPI_VALUES
        },
        "per_kind": {k: _accuracy(correct, kind == k) for k in synthetic.KINDS},
        "specificity_non_influenza_cpe": _accuracy(
            correct, np.isin(kind, synthetic.NON_INFLUENZA_KINDS)
        ),
        "specificity_hard_negatives": _accuracy(correct, np.isin(kind, synthetic.HARD_NEGATIVE_KINDS)),
        "specificity_clean_uninfected": _accuracy(correct, kind == synthetic.UNINFECTED),
    }
    return metrics


def per_family_metrics(records: Sequence[dict[str, Any]], p_infected: Sequence[float]) -> dict[str, Any]:
    """The headline figures of `compute_metrics` for each rendering family."""
    p = np.asarray(p_infected, float)
    out = {}
    for family in dict.fromkeys(r.get("family", "v1") for r in records):
        mask = np.array([r.get("family", "v1") == family for r in records])
        sub = [r for r, m in zip(records, mask) if m]
        m = compute_metrics(sub, p[mask])
        out[family] = {k: m[k] for k in ("n_images", "accuracy", "errors", "sensitivity",
                                          "specificity", "ece_10_bins")}
        out[family]["severity_1"] = m["per_severity"]["1"]
        out[family]["non_influenza_cpe"] = m["specificity_non_influenza_cpe"]
    return out


def wilson_upper_error(errors: int, n: int, z: float = 2.576) -> float:
    """Upper bound of a 99% Wilson interval on an error rate of errors/n."""
    if n == 0:
        return 1.0
    phat = errors / n
    denom = 1 + z * z / n
    centre = phat + z * z / (2 * n)
    margin = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n))
    return (centre + margin) / denom


def predict_saved_model(model_dir: Path, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """P(infected) from the exported serving signature; images are raw (N, H, W, 1) float32."""
    import tensorflow as tf

    serve = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    out = []
    for start in range(0, len(images), batch_size):
        batch = tf.constant(images[start : start + batch_size], tf.float32)
        out.append(serve(image=batch)["probabilities"].numpy()[:, 1])
    return np.concatenate(out)


def main(argv: Sequence[str] | None = None) -> None:
    from service.preprocessing import prepare

    parser = argparse.ArgumentParser(description="Evaluate an exported CPE model on test seeds")
    parser.add_argument("--model", type=Path, default=Path("model_repository/cpe_cnn/1"))
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    rows = synthetic.make_plan("test", args.count)
    start = time.perf_counter()
    images, records = [], []
    for pixels, record in synthetic.iter_set(rows, args.processes):
        images.append(prepare(pixels, synthetic.HEIGHT, synthetic.WIDTH, 1))
        records.append(record)
    p = predict_saved_model(args.model, np.stack(images))
    metrics = compute_metrics(records, p)
    print(json.dumps(metrics, indent=2))
    print(f"{len(records)} images in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
