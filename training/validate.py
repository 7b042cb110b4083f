"""Score a lab's labelled fields: offline (SavedModel) or against a running service.

    python -m training.validate --manifest labels.csv [--model-dir model_repository/cpe_cnn/2]
    python -m training.validate --manifest labels.csv --url http://localhost:8000

Reports sensitivity, specificity and accuracy with 95% Wilson intervals, the confusion matrix,
ECE and a reliability diagram (PNG), and the highest decision threshold that keeps the
sensitivity on this set at or above --target-sensitivity (a suggestion for metadata.json's
`decision_threshold`, only as good as the set is representative). Writes report.json and
reliability.png to --out.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.evaluate import expected_calibration_error


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float | None, float | None]:
    """95% Wilson score interval of a proportion (None for n = 0)."""
    if n == 0:
        return None, None
    phat = successes / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    margin = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return round(max(centre - margin, 0.0), 4), round(min(centre + margin, 1.0), 4)


def _proportion(successes: int, n: int) -> dict[str, Any]:
    low, high = wilson_interval(successes, n)
    return {"value": round(successes / n, 4) if n else None, "successes": successes, "n": n,
            "ci95": [low, high]}


def suggest_threshold(p: np.ndarray, truth: np.ndarray, target_sensitivity: float) -> dict[str, Any]:
    """Highest threshold t (P(infected) >= t is 'infected') with sensitivity >= target."""
    positives = np.sort(p[truth == 1])
    if positives.size == 0:
        return {"threshold": None, "note": "no infected images in the set"}
    # Keep at least ceil(target * n) positives at or above t: t = that positive's score.
    keep = math.ceil(target_sensitivity * positives.size)
    threshold = float(positives[positives.size - keep]) if keep else 1.0
    predicted = p >= threshold
    return {
        "threshold": round(threshold, 6),
        "target_sensitivity": target_sensitivity,
        "sensitivity": round(float(predicted[truth == 1].mean()), 4),
        "specificity": round(float((~predicted[truth == 0]).mean()), 4) if (truth == 0).any() else None,
    }


def report(p: np.ndarray, truth: np.ndarray, threshold: float, target_sensitivity: float) -> dict[str, Any]:
    """Every figure of the validation report for P(infected) `p` and labels 0/1 `truth`."""
    p = np.asarray(p, float)
    truth = np.asarray(truth, int)
    predicted = p >= threshold
    tp = int((predicted & (truth == 1)).sum())
    fn = int((~predicted & (truth == 1)).sum())
    tn = int((~predicted & (truth == 0)).sum())
    fp = int((predicted & (truth == 0)).sum())
    return {
        "n_images": len(p),
        "decision_threshold": threshold,
        "sensitivity": _proportion(tp, tp + fn),
        "specificity": _proportion(tn, tn + fp),
        "accuracy": _proportion(tp + tn, len(p)),
        "confusion_matrix": {"labels": ["uninfected", "infected"], "rows_truth_cols_predicted":
                             [[tn, fp], [fn, tp]]},
        "ece_10_bins": round(expected_calibration_error(p, truth.astype(bool), 10), 4),
        "suggested_threshold": suggest_threshold(p, truth, target_sensitivity),
    }


def reliability_diagram(p: np.ndarray, truth: np.ndarray, path: Path, bins: int = 10) -> Path:
    """Observed fraction infected vs mean predicted P(infected) per bin, with counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    xs, ys, ns = [], [], []
    for b in range(bins):
        inside = which == b
        if inside.any():
            xs.append(p[inside].mean())
            ys.append(truth[inside].mean())
            ns.append(int(inside.sum()))
    ax.plot(xs, ys, "o-", label="this set")
    for x, y, n in zip(xs, ys, ns):
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted P(infected)",
           ylabel="observed fraction infected", title=f"Reliability ({len(p)} images)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def score_offline(model_dir: Path, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    from training import synthetic
    from training.manifest import load_images
    from training.signature import load_signature, run_images

    images = load_images(rows, synthetic.HEIGHT, synthetic.WIDTH)
    return run_images(load_signature(model_dir), images)


def score_service(url: str, rows: list[dict[str, Any]], timeout_s: float = 60.0) -> dict[str, np.ndarray]:
    """POST each file to {url}/predict (multipart field `image`); P(infected) per image."""
    import requests

    p = []
    with requests.Session() as session:
        for row in rows:
            path = Path(row["path"])
            with open(path, "rb") as handle:
                response = session.post(f"{url.rstrip('/')}/predict",
                                        files={"image": (path.name, handle)}, timeout=timeout_s)
            response.raise_for_status()
            p.append(float(response.json()["predictions"][0]["probabilities"]["infected"]))
    return {"p_infected": np.array(p)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, required=True)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--url", default=None, help="running service, e.g. http://localhost:8000")
    source.add_argument("--model-dir", type=Path, default=None,
                        help="exported version (default: latest under model_repository/cpe_cnn)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="decision threshold (default: the version's metadata, else 0.5)")
    parser.add_argument("--target-sensitivity", type=float, default=0.95)
    parser.add_argument("--out", type=Path, default=Path("validation_report"))
    args = parser.parse_args(argv)
    from training.manifest import read_labelled

    rows = read_labelled(args.manifest)
    truth = np.array([r["label"] for r in rows])
    threshold = args.threshold
    if args.url:
        p = score_service(args.url, rows)["p_infected"]
        source_name = args.url
    else:
        from training.model import latest_version

        model_dir = args.model_dir or latest_version(Path("model_repository/cpe_cnn"))
        p = score_offline(model_dir, rows)["probabilities"][:, 1]
        source_name = str(model_dir)
        if threshold is None:
            metadata = json.loads((Path(model_dir) / "metadata.json").read_text())
            threshold = float(metadata.get("decision_threshold", 0.5))
    threshold = 0.5 if threshold is None else threshold
    result = {"source": source_name, "manifest": str(args.manifest),
              **report(p, truth, threshold, args.target_sensitivity)}
    args.out.mkdir(parents=True, exist_ok=True)
    result["reliability_diagram"] = str(reliability_diagram(p, truth, args.out / "reliability.png"))
    result["predictions"] = [{"path": str(r["path"]), "label": int(r["label"]),
                              "p_infected": round(float(x), 5)} for r, x in zip(rows, p)]
    (args.out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: result[k] for k in ("n_images", "sensitivity", "specificity", "accuracy",
                                       "ece_10_bins", "confusion_matrix", "suggested_threshold")}
    print(json.dumps(summary, indent=2))
    return result


if __name__ == "__main__":
    main()
