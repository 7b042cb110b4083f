"""`make train-lofo`: leave-one-family-out validation of the training recipe.

    python -m training.lofo [--train-count 600 --test-count 150 --epochs 4]

For each rendering family F: train on every other family (validation images from those
families too), then score on held-out test seeds rendered by F alone. Accuracy on a family the
model never saw is the closest this synthetic benchmark gets to "a renderer we did not write"
(issue #14). Writes `lofo.json` and `lofo.md` (a table) to --out; the model card quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training import synthetic
from training.families import FAMILIES

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_OUT = Path("training/results")
LOFO_SEED = 20200502


def lofo_plan(families: Sequence[str], train_count: int, val_count: int,
              test_count: int) -> list[dict[str, Any]]:
    """One fold per family: the training families and the rows of each split."""
    folds = []
    for held_out in families:
        rest = tuple(f for f in families if f != held_out)
        if not rest:
            raise ValueError("leave-one-family-out needs at least two families")
        folds.append({
            "held_out": held_out,
            "train_families": list(rest),
            "train": synthetic.make_plan("train", train_count, families=rest),
            "validation": synthetic.make_plan("validation", val_count, families=rest),
            "test": synthetic.make_plan("test", test_count, families=(held_out,)),
        })
    return folds


def fold_summary(records: Sequence[dict[str, Any]], p_infected: np.ndarray) -> dict[str, Any]:
    """The issue's figures for one held-out family."""
    from training.evaluate import compute_metrics

    m = compute_metrics(records, p_infected)
    return {
        "n_images": m["n_images"],
        "accuracy": m["accuracy"],
        "sensitivity": m["sensitivity"],
        "specificity": m["specificity"],
        "severity_1": m["per_severity"]["1"]["accuracy"],
        "non_influenza_cpe_specificity": m["specificity_non_influenza_cpe"]["accuracy"],
        "ece_10_bins": m["ece_10_bins"],
    }


def render_table(result: dict[str, Any]) -> str:
    """Markdown table of the folds."""
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    lines = [
        "| Held-out family | n | accuracy | sensitivity | specificity | severity 1 | "
        "non-influenza CPE spec. | ECE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for fold in result["folds"]:
        s = fold["summary"]
        lines.append(
            f"| {fold['held_out']} | {s['n_images']} | {pct(s['accuracy'])} | "
            f"{pct(s['sensitivity'])} | {pct(s['specificity'])} | {pct(s['severity_1'])} | "
            f"{pct(s['non_influenza_cpe_specificity'])} | {s['ece_10_bins']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def run(families: Sequence[str], *, hold_out: Sequence[str] | None = None, train_count: int, val_count: int, test_count: int,
        epochs: int, batch_size: int, learning_rate: float, processes: int, out: Path,
        log) -> dict[str, Any]:
    """Train and score every fold; write lofo.json + lofo.md after each fold (partial runs count)."""
    from training.model import build_model
    from training.recipe import fit, load_set, predict

    result: dict[str, Any] = {
        "generator_version": synthetic.GENERATOR_VERSION,
        "settings": {"train_count": train_count, "val_count": val_count, "test_count": test_count,
                     "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
                     "seed": LOFO_SEED},
        "command": "python -m training.lofo",
        "folds": [],
    }
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for fold in lofo_plan(families, train_count, val_count, test_count):
        if hold_out and fold["held_out"] not in hold_out:
            continue
        log(f"fold: hold out {fold['held_out']}")
        x, y, _ = load_set(fold["train"], processes, log, "train")
        xv, yv, _ = load_set(fold["validation"], processes, log, "validation")
        model = build_model(seed=LOFO_SEED)
        recipe = fit(model, x, y, xv, yv, epochs=epochs, batch_size=batch_size,
                     learning_rate=learning_rate, seed=LOFO_SEED, log=log)
        del x, xv
        xt, _, records = load_set(fold["test"], processes, log, "test")
        p = predict(model, xt, batch_size)[:, 1]
        summary = fold_summary(records, p)
        log(f"held out {fold['held_out']}: {summary}")
        result["folds"].append({"held_out": fold["held_out"], "train_families": fold["train_families"],
                                "selected_epoch": recipe["selected_epoch"], "summary": summary})
        result["wall_time_s"] = round(time.perf_counter() - start, 1)
        (out / "lofo.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "lofo.md").write_text(render_table(result))
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--families", default="all", help="comma-separated, or 'all'")
    parser.add_argument("--hold-out", default=None,
                        help="comma-separated families: run only these folds (default: all)")
    parser.add_argument("--train-count", type=int, default=600)
    parser.add_argument("--val-count", type=int, default=100)
    parser.add_argument("--test-count", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    from training.recipe import make_logger

    families = FAMILIES if args.families == "all" else tuple(args.families.split(","))
    hold_out = tuple(args.hold_out.split(",")) if args.hold_out else None
    result = run(families, hold_out=hold_out, train_count=args.train_count, val_count=args.val_count,
                 test_count=args.test_count, epochs=args.epochs, batch_size=args.batch_size,
                 learning_rate=args.learning_rate, processes=args.processes, out=args.out,
                 log=make_logger())
    print(render_table(result))


if __name__ == "__main__":
    main()
