"""`make train-lofo`: leave-one-family-out validation of the training recipe.

    python -m training.lofo [--hold-out v1,faint --merge]

For each rendering family F: train on every other family (validation images from those
families too), then score on held-out test seeds rendered by F alone. Accuracy on a family the
model never saw is the closest this synthetic benchmark gets to "a renderer we did not write"
(issue #14). Writes `lofo.json` and `lofo.md` (a table) to --out; the model card quotes them.

Folds are CPU-expensive, so they may be run a few at a time: `--merge` keeps the folds already
in OUT/lofo.json for families not re-run. Every fold records its settings and command, and a
merge of folds trained with different settings is refused, so one table never mixes them.
"""

from __future__ import annotations

import argparse
import json
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
LOFO_SEED = 20200502


class MixedSettings(ValueError):
    """Folds trained with different settings (or generators) would land in one table."""


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


def _families_of(result: dict[str, Any]) -> list[str]:
    """The run's families; files written before `families` was recorded: from a fold."""
    if "families" in result:
        return list(result["families"])
    fold = result["folds"][0]
    return [f for f in FAMILIES if f in {fold["held_out"], *fold["train_families"]}]


def check_mergeable(existing: dict[str, Any], new: dict[str, Any]) -> None:
    """Raise MixedSettings unless every fold of `existing` was trained as `new` will be."""
    if existing.get("generator_version") != new["generator_version"]:
        raise MixedSettings(f"generator {existing.get('generator_version')} in the file, "
                            f"{new['generator_version']} now")
    if existing.get("folds") and sorted(_families_of(existing)) != sorted(new["families"]):
        raise MixedSettings(f"families {_families_of(existing)} in the file, {new['families']} now")
    for fold in existing.get("folds", []):
        settings = fold.get("settings", existing["settings"])
        if settings != new["settings"]:
            raise MixedSettings(f"fold {fold['held_out']!r} was trained with {settings}, this run "
                                f"uses {new['settings']}; rerun it too or write to another --out")


def merge_results(existing: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """`new`'s folds plus `existing`'s folds of families `new` did not run, in family order.

    Folds from files written before per-fold settings were recorded get the file's settings
    and command, so every fold of the merged result says how it was trained.
    """
    merged = dict(new)
    if existing:
        check_mergeable(existing, new)
        rerun = {f["held_out"] for f in new["folds"]}
        legacy = {"settings": existing["settings"], "command": existing.get("command")}
        kept = [{**legacy, **f} for f in existing["folds"] if f["held_out"] not in rerun]
        merged = {**existing, **new, "folds": kept + new["folds"],
                  "wall_time_s": round(existing.get("wall_time_s", 0) + new.get("wall_time_s", 0), 1)}
        merged.pop("command", None)
    order = {f: i for i, f in enumerate(merged["families"])}
    merged["folds"] = sorted(merged["folds"], key=lambda f: order.get(f["held_out"], len(order)))
    merged["commands"] = list(dict.fromkeys(f["command"] for f in merged["folds"] if f.get("command")))
    done, total = len(merged["folds"]), len(merged["families"])
    merged["status"] = f"{'complete' if done == total else 'partial'}: {done} of {total} folds"
    return merged


def render_table(result: dict[str, Any]) -> str:
    """Markdown table of the folds."""
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    lines = [
        ("| Held-out family | n | accuracy | sensitivity | specificity | severity 1 | "
         "non-influenza CPE spec. | ECE |"),
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


def render_section(result: dict[str, Any]) -> list[str]:
    """The model card's lines: what was run and with what, the status, the table."""
    s = result["settings"]
    commands = result.get("commands") or [result.get("command", "python -m training.lofo")]
    return [
        (f"Train on every family but one, test on the one left out. **Reduced runs**, smaller than the "
        f"release training: {s['train_count']} training and {s['val_count']} validation images "
        f"from the other families, {s['test_count']} test images of the held-out family, "
        f"{s['epochs']} epochs, batch size {s['batch_size']}, peak learning rate "
        f"{s['learning_rate']}, seed {s['seed']}, the same for every fold "
        f"(`training/results/lofo.json`; commands: {', '.join(f'`{c}`' for c in commands)})."),
        "",
        f"**Status: {result.get('status', 'unknown')}.**" + (f" {result['note']}" if result.get("note") else ""),
        "",
        render_table(result),
    ]


def run(families: Sequence[str], *, hold_out: Sequence[str] | None = None, train_count: int,
        val_count: int, test_count: int, epochs: int, batch_size: int, learning_rate: float,
        processes: int, out: Path, log, merge: bool = False, command: str = "python -m training.lofo",
        ) -> dict[str, Any]:
    """Train and score every fold; write lofo.json + lofo.md after each fold (partial runs count)."""
    from training.model import build_model
    from training.recipe import fit, load_set, predict

    settings = {"train_count": train_count, "val_count": val_count, "test_count": test_count,
                "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
                "seed": LOFO_SEED}
    new: dict[str, Any] = {"generator_version": synthetic.GENERATOR_VERSION,
                           "families": list(families), "settings": settings, "folds": []}
    existing = None
    if merge and (out / "lofo.json").is_file():
        existing = json.loads((out / "lofo.json").read_text())
        check_mergeable(existing, new)  # before hours of training, not after
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = merge_results(existing, new)
    for fold in lofo_plan(families, train_count, val_count, test_count):
        if hold_out and fold["held_out"] not in hold_out:
            continue
        fold_start = time.perf_counter()
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
        new["folds"].append({
            "held_out": fold["held_out"], "train_families": fold["train_families"],
            "settings": settings, "command": command, "selected_epoch": recipe["selected_epoch"],
            "history": recipe["history"], "wall_time_s": round(time.perf_counter() - fold_start, 1),
            "summary": summary})
        new["wall_time_s"] = round(time.perf_counter() - start, 1)
        result = merge_results(existing, new)
        (out / "lofo.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "lofo.md").write_text(render_table(result))
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--hold-out", default=None,
                        help="comma-separated families: run only these folds (default: all)")
    parser.add_argument("--merge", action="store_true",
                        help="keep OUT/lofo.json's folds of families not re-run (same settings only)")
    add_reduced_run_arguments(parser)
    args = parser.parse_args(argv)
    from training.recipe import make_logger

    families = FAMILIES if args.families == "all" else tuple(args.families.split(","))
    hold_out = tuple(args.hold_out.split(",")) if args.hold_out else None
    given = list(sys.argv[1:] if argv is None else argv)
    try:
        result = run(families, hold_out=hold_out, train_count=args.train_count,
                     val_count=args.val_count, test_count=args.test_count, epochs=args.epochs,
                     batch_size=args.batch_size, learning_rate=args.learning_rate,
                     processes=args.processes, out=args.out, log=make_logger(), merge=args.merge,
                     command=shlex.join(["python", "-m", "training.lofo", *given]))
    except MixedSettings as error:
        raise SystemExit(f"refusing to merge into {args.out / 'lofo.json'}: {error}") from error
    print(render_table(result))


if __name__ == "__main__":
    main()
