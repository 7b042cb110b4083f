"""`make train-seeds`: the training recipe's spread over initialisation seeds (issue #14).

    python -m training.seeds [--seeds 20200501,1,2 --train-count 600 --epochs 3]

The paper's sigmoid head can sit on the chance plateau for a seed-dependent time, so one good
run says little about the recipe. This trains `training.recipe.fit` once per seed on the *same*
reduced data (every family; the seed sets the weight initialisation, the LSUV batch, the batch
order and the augmentation draws) and reports, per seed, whether it left the plateau, the kept
epoch, validation and test accuracy and ECE, and the spread (min / median / max). Writes
`seeds.json` and `seeds.md` to --out after every seed; the model card quotes them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training import synthetic
from training.families import FAMILIES
from training.recipe import add_reduced_run_arguments

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_OUT = Path("training/results")
DEFAULT_SEEDS = (20200501, 1, 2)  # the release model's seed and two others
#: Left the plateau: validation accuracy at least this far above the majority-class rate ...
ACCURACY_MARGIN = 0.10
#: ... and validation log loss at least this far below ln 2 (the loss of p = 0.5 everywhere).
LOSS_MARGIN = 0.05
SPREAD_KEYS = ("selected_epoch", "val_accuracy", "test_accuracy", "test_ece_10_bins")


def plateau_escape(history: Sequence[dict[str, Any]], chance: float) -> int | None:
    """First epoch that left the sigmoid-dense plateau, or None if the run never did.

    On the plateau the head answers p ~ 0.5 (or the majority class) for every image: validation
    loss ~ ln 2 and accuracy ~ chance. Leaving it needs both, so a run that only shifts its
    bias toward the majority class, or is confidently wrong, does not count.
    """
    for h in history:
        if (h["val_accuracy"] >= chance + ACCURACY_MARGIN
                and h["val_loss"] <= math.log(2) - LOSS_MARGIN):
            return int(h["epoch"])
    return None


def spread(values: Sequence[float | int | None]) -> dict[str, float | None]:
    """min / median / max of the values that exist."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return {"min": None, "median": None, "max": None}
    return {"min": min(present), "median": float(np.median(present)), "max": max(present)}


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Status, escape count and spread over the runs done so far."""
    runs, wanted = result["runs"], len(result["seeds"])
    escaped = sum(r["escaped_plateau"] for r in runs)
    result["status"] = f"{'complete' if len(runs) == wanted else 'partial'}: {len(runs)} of {wanted} seeds"
    result["escaped"] = f"{escaped} of {len(runs)}"
    result["spread"] = {k: spread([r[k] for r in runs]) for k in SPREAD_KEYS}
    return result


def seed_run(seed: int, data: dict[str, Any], settings: dict[str, Any], log) -> dict[str, Any]:
    """One training of the recipe from `seed`, scored on validation and test."""
    from training.evaluate import compute_metrics
    from training.model import build_model
    from training.recipe import fit, predict

    start = time.perf_counter()
    x, y, xv, yv, xt, records = (data[k] for k in ("x", "y", "xv", "yv", "xt", "records"))
    model = build_model(seed=seed % 2**31)
    recipe = fit(model, x, y, xv, yv, epochs=settings["epochs"], batch_size=settings["batch_size"],
                 learning_rate=settings["learning_rate"], seed=seed, log=log)
    metrics = compute_metrics(records, predict(model, xt, settings["batch_size"])[:, 1].tolist())
    chance = float(max(np.mean(yv), 1 - np.mean(yv)))
    escape = plateau_escape(recipe["history"], chance)
    kept = recipe["history"][recipe["selected_epoch"] - 1]
    return {
        "seed": seed,
        "escaped_plateau": escape is not None,
        "escape_epoch": escape,
        "val_chance": round(chance, 4),
        "selected_epoch": recipe["selected_epoch"],
        "val_accuracy": kept["val_accuracy"],
        "val_loss": kept["val_loss"],
        "test_accuracy": metrics["accuracy"],
        "test_sensitivity": metrics["sensitivity"],
        "test_specificity": metrics["specificity"],
        "test_ece_10_bins": metrics["ece_10_bins"],
        "temperature": recipe["temperature"],
        "history": recipe["history"],
        "wall_time_s": round(time.perf_counter() - start, 1),
    }


def run(seeds: Sequence[int], families: Sequence[str], settings: dict[str, Any], processes: int,
        out: Path, log, command: str) -> dict[str, Any]:
    """Load the data once, train once per seed; write seeds.json + seeds.md after every seed."""
    from training.recipe import load_set

    start = time.perf_counter()
    counts = {"train": "train_count", "validation": "val_count", "test": "test_count"}
    plans = {split: synthetic.make_plan(split, settings[key], families=families)
             for split, key in counts.items()}
    x, y, _ = load_set(plans["train"], processes, log, "train")
    xv, yv, _ = load_set(plans["validation"], processes, log, "validation")
    xt, _, records = load_set(plans["test"], processes, log, "test")
    data = {"x": x, "y": y, "xv": xv, "yv": yv, "xt": xt, "records": records}
    result: dict[str, Any] = {
        "generator_version": synthetic.GENERATOR_VERSION, "families": list(families),
        "settings": settings, "seeds": list(seeds), "command": command,
        "plateau_definition": (
            f"left the plateau at the first epoch whose validation accuracy is >= the majority-class "
            f"rate + {ACCURACY_MARGIN:.2f} and whose validation log loss is <= ln 2 - {LOSS_MARGIN}"),
        "data_wall_time_s": round(time.perf_counter() - start, 1),
        "runs": [],
    }
    out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        log(f"seed {seed}")
        result["runs"].append(seed_run(seed, data, settings, log))
        log(f"seed {seed}: { {k: v for k, v in result['runs'][-1].items() if k != 'history'} }")
        result["wall_time_s"] = round(time.perf_counter() - start, 1)
        summarise(result)
        (out / "seeds.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "seeds.md").write_text(render_table(result))
    return result


def render_table(result: dict[str, Any]) -> str:
    """Markdown: one row per seed, then min / median / max."""
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    lines = ["| Seed | left plateau (epoch) | kept epoch | val accuracy | test accuracy | test ECE |",
             "|---|---|---|---|---|---|"]
    for r in result["runs"]:
        left = f"yes ({r['escape_epoch']})" if r["escaped_plateau"] else "**no**"
        lines.append(f"| {r['seed']} | {left} | {r['selected_epoch']} | {pct(r['val_accuracy'])} | "
                     f"{pct(r['test_accuracy'])} | {r['test_ece_10_bins']:.3f} |")
    s = result["spread"]
    for stat in ("min", "median", "max"):
        cells = [s["selected_epoch"][stat], pct(s["val_accuracy"][stat]),
                 pct(s["test_accuracy"][stat]),
                 "n/a" if s["test_ece_10_bins"][stat] is None else f"{s['test_ece_10_bins'][stat]:.3f}"]
        epoch = "n/a" if cells[0] is None else f"{cells[0]:g}"
        lines.append(f"| *{stat}* | {result['escaped'] if stat == 'median' else ''} | {epoch} | "
                     f"{cells[1]} | {cells[2]} | {cells[3]} |")
    return "\n".join(lines) + "\n"


def render_section(result: dict[str, Any]) -> list[str]:
    """The model card's lines: settings (reduced), the plateau criterion, status, table."""
    s = result["settings"]
    return [
        (f"The recipe (`training.recipe.fit`) trained from {len(result['seeds'])} seeds on the same "
        f"data. **Reduced runs**, smaller than the release training: {s['train_count']} training, "
        f"{s['val_count']} validation and {s['test_count']} test images of every family, "
        f"{s['epochs']} epochs, batch size {s['batch_size']}, peak learning rate "
        f"{s['learning_rate']} (`training/results/seeds.json`; command: `{result['command']}`). "
        f"A run {result['plateau_definition']}."),
        "",
        f"**Status: {result['status']}; left the plateau: {result['escaped']}.**"
        + (f" {result['note']}" if result.get("note") else ""),
        "",
        render_table(result),
    ]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)))
    add_reduced_run_arguments(parser)  # the LOFO folds' reduced settings, for comparison
    args = parser.parse_args(argv)
    from training.recipe import make_logger

    families = FAMILIES if args.families == "all" else tuple(args.families.split(","))
    settings = {"train_count": args.train_count, "val_count": args.val_count,
                "test_count": args.test_count, "epochs": args.epochs,
                "batch_size": args.batch_size, "learning_rate": args.learning_rate}
    given = list(sys.argv[1:] if argv is None else argv)
    result = run([int(s) for s in args.seeds.split(",")], families, settings, args.processes,
                 args.out, make_logger(), shlex.join(["python", "-m", "training.seeds", *given]))
    print(render_table(result))
    return result


if __name__ == "__main__":
    main()
