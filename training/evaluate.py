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

from service.models.metadata import METADATA_FILE
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


# --------------------------------------------------------------------------------------------
# Model card, rendered from the exported metadata.json

TARGETS = {
    "accuracy": 0.99,
    "severity_1_accuracy": 0.90,
    "non_influenza_specificity": 1.0,
    "ece_max": 0.03,
}

_PAPER = (
    "Wang R, Zuo P, Cai L, Wang Y, Zeng J, et al. (2020) *Differentiation of cytopathic effects "
    "induced by influenza virus infection using deep Convolutional Neural Networks (CNN).* "
    "PLoS Comput Biol 16(5): e1007883."
)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _row(name: str, block: dict[str, Any]) -> str:
    return f"| {name} | {block['n']} | {block['correct']} | {_pct(block['accuracy'])} |"


def render_model_card(metadata: dict[str, Any]) -> str:
    ev = metadata["evaluation"]
    tr = metadata["training"]
    sev1 = ev["per_severity"]["1"]["accuracy"]
    nonflu = ev["specificity_non_influenza_cpe"]["accuracy"]
    checks = [
        ("overall accuracy >= 99%", ev["accuracy"] >= TARGETS["accuracy"]),
        ("severity-1 accuracy >= 90%", sev1 is not None and sev1 >= TARGETS["severity_1_accuracy"]),
        ("100% specificity on non-influenza CPE", nonflu == TARGETS["non_influenza_specificity"]),
        ("ECE (10 bins) <= 0.03", ev["ece_10_bins"] <= TARGETS["ece_max"]),
    ]
    counts = tr["counts"]
    kinds = synthetic.KINDS
    lines = [
        f"# Model card: `{metadata['name']}` version {metadata['version']}",
        "",
        "Binary classifier of phase-contrast microscopy fields of MDCK cell monolayers: "
        "`infected` (influenza cytopathic effect, CPE) vs `uninfected`. "
        "**Trained and evaluated on synthetic images only.**",
        "",
        "> Accuracy on synthetic data says nothing about accuracy on real MDCK images. This "
        "model has never seen a real micrograph; it exists to exercise the serving stack end "
        "to end. Do not use it to make any laboratory or clinical decision.",
        "",
        "## Architecture",
        "",
        f"The CNN of {_PAPER}",
        "",
        "* Input: one full-resolution grey field, 1024 x 1360 x 1 (no downsampling in or "
        "before the model).",
        "* Conv2D(20, 7x7, valid) + ReLU -> MaxPool 10 -> Conv2D(25, 5x5) + ReLU -> MaxPool 6 "
        "-> Conv2D(30, 3x3) + ReLU -> MaxPool 6 -> Flatten -> 3 x Dense(100, sigmoid) -> "
        f"Dense(2, softmax); {metadata['parameters']:,} parameters.",
        "* Serving signature `serving_default`: input `image`, float32 [None, 1024, 1360, 1] in "
        "*raw intensity units* (8-bit, 12-bit-in-16-bit or 16-bit values as decoded); output "
        "`probabilities` [None, 2], classes `[\"uninfected\", \"infected\"]`.",
        "* Intensity normalisation is inside the signature "
        f"({metadata['preprocessing']['normalization']}; `training/normalization.py`), so every "
        "backend gives the same answer for the same pixels. Preprocessing version "
        f"{metadata['preprocessing']['version']}, sha256 `{metadata['preprocessing']['sha256'][:16]}...`.",
        f"* Softmax temperature fitted on the validation set and folded into the last layer: "
        f"T = {tr['temperature']}.",
        "",
        "## Paper's reported results (real images, for reference only)",
        "",
        "| Measure | Paper |",
        "|---|---|",
        "| Accuracy, 400 test images | 99.75% |",
        "| Accuracy at 16 / 28 / 40 h post infection | 71.80% / 98.25% / 87.46% |",
        "| Specificity against six other viruses | 100% |",
        "",
        "These are *not* reproduced here: our data are synthetic.",
        "",
        "## Data",
        "",
        f"Synthetic fields from `training/synthetic.py`, generator version "
        f"{tr['generator_version']}: Voronoi cobblestone monolayers; influenza CPE as "
        "plaque-like foci (contraction, rounding with bright halo and granularity, detachment "
        "leaving substrate and debris) with severity grades 1-4 and 16/28/40 hpi; hard "
        "negatives (sub-confluent gaps, mitotic cells, debris, trypsin-like contraction); "
        "non-influenza CPE labelled `uninfected` (syncytia, grape-like clusters); "
        "label-independent nuisances (illumination, vignetting, defocus, shot/read noise, "
        "exposure, bit depth, dust, flips); per-image intensity statistics equalised.",
        "",
        "| Kind | Label | Train | Validation | Test |",
        "|---|---|---|---|---|",
    ]
    for kind in kinds:
        lines.append(
            f"| {kind} | {synthetic.label_of(kind)} | {counts['train'].get(kind, 0)} | "
            f"{counts['validation'].get(kind, 0)} | {counts['test'].get(kind, 0)} |"
        )
    seeds = tr["seed_ranges"]
    lines += [
        f"| **total** | | {sum(counts['train'].values())} | {sum(counts['validation'].values())} "
        f"| {sum(counts['test'].values())} |",
        "",
        f"Seeds: train {seeds['train'][0]}-{seeds['train'][1]}, validation "
        f"{seeds['validation'][0]}-{seeds['validation'][1]}, test {seeds['test'][0]}-"
        f"{seeds['test'][1]} (disjoint ranges).",
        "",
        "## Evaluation (held-out synthetic test seeds)",
        "",
        f"Decision threshold {ev['decision_threshold']} on P(infected). "
        f"{ev['n_images']} images, {ev['errors']} errors.",
        "",
        "| Measure | Value |",
        "|---|---|",
        f"| Overall accuracy | {_pct(ev['accuracy'])} |",
        f"| Sensitivity (influenza) | {_pct(ev['sensitivity'])} |",
        f"| Specificity (all uninfected kinds) | {_pct(ev['specificity'])} |",
        f"| Expected calibration error (10 bins) | {ev['ece_10_bins']:.4f} |",
        f"| Log loss | {ev['log_loss']:.4f} |",
        "",
        "| Stratum | n | correct | accuracy |",
        "|---|---|---|---|",
    ]
    for s in range(5):
        name = "severity 0 (all uninfected kinds)" if s == 0 else f"influenza severity {s}"
        lines.append(_row(name, ev["per_severity"][str(s)]))
    for h in synthetic.HPI_VALUES:
        lines.append(_row(f"influenza at {h} hpi", ev["per_hpi_infected"][str(h)]))
    for h in synthetic.HPI_VALUES:
        lines.append(_row(f"all images at {h} hpi", ev["per_hpi_all"][str(h)]))
    lines.append(_row("specificity: non-influenza CPE (syncytia + grape clusters)",
                      ev["specificity_non_influenza_cpe"]))
    lines.append(_row("specificity: hard negatives", ev["specificity_hard_negatives"]))
    for kind in kinds:
        lines.append(_row(f"kind `{kind}`", ev["per_kind"][kind]))
    lines += ["", "Targets set for this synthetic benchmark:", ""]
    lines += [f"* [{'x' if ok else ' '}] {name}" for name, ok in checks]
    lines += [
        "",
        "Figures are read from `1/metadata.json` (`evaluation` block; also "
        "`1/assets.extra/evaluation.json`); per-image predictions are in "
        "`1/assets.extra/test_manifest.csv`. `tests/test_model_card.py` re-runs the exported "
        "signature on a sample of the same test seeds and fails if the model and these "
        "figures disagree.",
        "",
        "## Training",
        "",
        f"Optimizer {tr['optimizer']}, {tr['loss']}, batch size {tr['batch_size']}, "
        f"{tr['epochs']} epochs (kept epoch {tr['selected_epoch']} by validation loss), "
        f"LSUV-style data-dependent initialisation, init seed {tr['init_seed']}; "
        f"TensorFlow {tr['tensorflow']}, Keras {tr['keras']}. "
        f"Wall time of the whole run: {tr['wall_time_s'] / 60:.1f} min on 2 shared CPU cores.",
        "",
        "| Epoch | loss | accuracy | val loss | val accuracy |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {h['epoch']} | {h['loss']} | {h['accuracy']} | {h['val_loss']} | {h['val_accuracy']} |"
        for h in tr["history"]
    ]
    lines += [
        "",
        "## Intended use",
        "",
        "Demonstration and testing of the CPE classification service (API, backends, TF "
        "Serving export, preprocessing contract). Not for research conclusions, diagnostics, "
        "or any decision about real cultures.",
        "",
        "## Limits",
        "",
        "* Synthetic data only: the generator encodes our assumptions of what CPE looks like. "
        "Real MDCK images differ in countless ways (cell line passage, confluence, objective, "
        "camera, plate plastic, virus strain, MOI, other CPE-like artefacts).",
        "* The non-influenza CPE classes are two simplified morphologies (syncytia, "
        "grape-like clusters), not the six viruses of the paper.",
        "* Severity and hpi are generator parameters, not measurements; the per-hpi figures are "
        "not comparable with the paper's.",
        "* Bitwise reproducibility across machines is not guaranteed (oneDNN threading).",
        "",
        "## Reproduce",
        "",
        "```",
        "make train        # = python -m training.train",
        "```",
        "",
        "regenerates the data from the seeds above, trains, evaluates, exports "
        "`model_repository/cpe_cnn/1` and rewrites this card. "
        "`python -m training.evaluate --model model_repository/cpe_cnn/1` re-evaluates the "
        "exported model; `python -m training.synthetic --out DIR --count N --split test` "
        "writes sample TIFFs and a manifest.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(version_dir: Path) -> Path:
    """Render MODEL_CARD.md next to the version directory from its metadata.json."""
    version_dir = Path(version_dir)
    metadata = json.loads((version_dir / METADATA_FILE).read_text())
    card = version_dir.parent / "MODEL_CARD.md"
    card.write_text(render_model_card(metadata))
    return card
