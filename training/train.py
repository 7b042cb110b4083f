"""`make train`: regenerate the synthetic data (generator v2, every family), train, gate, export.

    python -m training.train            # writes model_repository/cpe_cnn/2

Steps (deterministic from fixed seeds; see MODEL_CARD.md for the wall time):

1. Generate the training (seeds 0..), validation (1_000_000..) and test (2_000_000..) sets with
   `training.synthetic`, wells dealt in turn to every rendering family (`training.families`).
2. Prepare (`service.preprocessing.prepare`) and normalise (`training.normalization`, the
   function the signature runs in-graph) into a float16 cache.
3. Train the paper CNN with `training.recipe.fit` (LSUV init, warm-up + cosine LR,
   flips/noise augmentation, best validation epoch, temperature folded into the last layer).
4. Fit the OOD gate (class means + shared covariance of the last Dense(100) features of the
   training set) and export with the gate's outputs in the signature.
5. Run the *exported* signature on validation (QC thresholds), test (per-family figures,
   in-distribution flag rate) and the package-shipped non-phase-contrast images (rejection
   rate); write metadata.json, assets.extra/ and MODEL_CARD.md.

TensorFlow is imported lazily so spawned data-generation workers stay light.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from service.models.metadata import METADATA_FILE, VersionMetadata, write_metadata
from training import synthetic
from training.families import FAMILIES

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_OUT = Path("model_repository/cpe_cnn/2")
TRAIN_SEED = 20200501
GATE_FEATURE_IMAGES = 600
#: Compact warm-up request: one flat 12-bit-range field (shape, fill value).
WARMUP_REQUEST = ((1, synthetic.HEIGHT, synthetic.WIDTH, 1), 1000.0)


def gate_from_cache(model, x: np.ndarray, y: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Mahalanobis gate fitted on (up to GATE_FEATURE_IMAGES) training images' features."""
    from training.model import feature_model
    from training.qc import fit_mahalanobis
    from training.recipe import predict

    pick = np.sort(np.random.default_rng(TRAIN_SEED).permutation(len(x))[:GATE_FEATURE_IMAGES])
    features = predict(feature_model(model), x[pick], batch_size, outputs="features")
    return fit_mahalanobis(features, y[pick])


def calibrate_and_evaluate(version_dir: Path, val_rows, test_rows, processes: int, log) -> dict[str, Any]:
    """Exported signature on validation, test and package images -> qc block, evaluation."""
    from training.evaluate import compute_metrics, per_family_metrics
    from training.package_images import load_package_images
    from training.qc import QC_OUTPUTS, apply_checks, calibrate_checks, qc_block
    from training.signature import load_signature, run_images, run_rows

    serve = load_signature(version_dir)
    val_out, _ = run_rows(serve, val_rows, processes)
    checks = calibrate_checks({k: val_out[k] for k in QC_OUTPUTS})
    log(f"qc checks from {len(val_rows)} validation images: {checks}")
    test_out, test_records = run_rows(serve, test_rows, processes)
    p_test = test_out["probabilities"][:, 1]
    test_gate = apply_checks(checks, test_out)
    flagged = np.array([s != "ok" for s in test_gate["status"]])
    names, images = load_package_images(synthetic.HEIGHT, synthetic.WIDTH)
    pkg_out = run_images(serve, images) if len(names) else {}
    pkg_gate = apply_checks(checks, pkg_out) if len(names) else {"status": [], "reasons": []}
    pkg = {
        "n": len(names),
        "flagged": int(sum(s != "ok" for s in pkg_gate["status"])),
        "rejected": int(sum(s == "reject" for s in pkg_gate["status"])),
        "images": [
            {"name": n, "status": s, "reasons": r, "p_infected": round(float(p), 5),
             **{k: float(f"{float(pkg_out[k][i]):.5g}") for k in QC_OUTPUTS}}
            for i, (n, s, r, p) in enumerate(zip(names, pkg_gate["status"], pkg_gate["reasons"],
                                                 pkg_out.get("probabilities", np.zeros((0, 2)))[:, 1]))
        ],
    }
    log(f"package images: {pkg['flagged']}/{pkg['n']} flagged, {pkg['rejected']} rejected")
    evaluation = compute_metrics(test_records, p_test)
    evaluation["per_family"] = per_family_metrics(test_records, p_test)
    evaluation["qc_flagged"] = {"n": len(flagged), "flagged": int(flagged.sum()),
                                "rate": round(float(flagged.mean()), 4)}
    qc = qc_block(checks, float(flagged.mean()), len(flagged),
                  {k: v for k, v in pkg.items() if k != "images"})
    for record, p, status, reasons, i in zip(test_records, p_test, test_gate["status"],
                                             test_gate["reasons"], range(len(p_test))):
        record["p_infected"] = round(float(p), 5)
        record["predicted"] = synthetic.LABELS[int(p >= 0.5)]
        record["qc"] = status if not reasons else f"{status}:{'+'.join(reasons)}"
        record["ood_score"] = round(float(test_out["ood_score"][i]), 3)
    return {"evaluation": evaluation, "qc": qc, "package_images": pkg, "test_records": test_records}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    from training.recipe import add_reduced_run_arguments

    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    add_reduced_run_arguments(parser)
    # The release run: larger than the reduced LOFO / seed-spread runs.
    parser.set_defaults(train_count=1200, val_count=200, test_count=500, epochs=5)
    parser.add_argument("--seed", type=int, default=TRAIN_SEED)
    parser.add_argument("--keep", type=Path, default=None,
                        help="also save the Keras weights and the gate here (for --reexport)")
    parser.add_argument("--reexport", action="store_true",
                        help="skip training: re-export --out from the weights and gate in --keep, "
                             "recalibrate the QC gate and re-evaluate (the training block is kept)")
    args = parser.parse_args(argv)
    if args.reexport:
        reexport(args)
        return
    start = time.perf_counter()

    import keras

    from training.card import write_model_card
    from training.model import build_model, export_model
    from training.recipe import fit, load_set, make_logger

    log = make_logger(start)
    families = FAMILIES if args.families == "all" else tuple(args.families.split(","))
    train_rows = synthetic.make_plan("train", args.train_count, families=families)
    val_rows = synthetic.make_plan("validation", args.val_count, families=families)
    test_rows = synthetic.make_plan("test", args.test_count, families=families)
    x_train, y_train, _ = load_set(train_rows, args.processes, log, "train")
    x_val, y_val, _ = load_set(val_rows, args.processes, log, "validation")

    model = build_model(seed=args.seed % 2**31)
    recipe = fit(model, x_train, y_train, x_val, y_val, epochs=args.epochs,
                 batch_size=args.batch_size, learning_rate=args.learning_rate,
                 seed=args.seed, log=log)
    gate = gate_from_cache(model, x_train, y_train, args.batch_size)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        model.save_weights(args.keep / "model.weights.h5")
        np.savez(args.keep / "gate.npz", **gate)
    del x_train, x_val
    version_dir = export_model(model, args.out, gate=gate)
    log(f"exported {version_dir}; running the exported signature")
    result = calibrate_and_evaluate(version_dir, val_rows, test_rows, args.processes, log)
    evaluation = result["evaluation"]
    evaluation.update({
        "split": "test",
        "seeds": [test_rows[0]["seed"], test_rows[-1]["seed"]],
        "generator_version": synthetic.GENERATOR_VERSION,
        "families": list(families),
        "decision_threshold": 0.5,
        "note": "synthetic images only; says nothing about real MDCK images",
    })
    log(f"test: accuracy {evaluation['accuracy']}, ECE {evaluation['ece_10_bins']}, "
        f"errors {evaluation['errors']}/{evaluation['n_images']}")

    def counts(rows):
        return {f: dict(Counter(r["kind"] for r in rows if r["family"] == f)) for f in families}

    training_meta = {
        "data": "synthetic (training.synthetic, generator v2 rendering families)",
        "generator_version": synthetic.GENERATOR_VERSION,
        "families": list(families),
        "counts": {
            "train": dict(Counter(r["kind"] for r in train_rows)),
            "validation": dict(Counter(r["kind"] for r in val_rows)),
            "test": dict(Counter(r["kind"] for r in test_rows)),
        },
        "counts_per_family": {"train": counts(train_rows), "test": counts(test_rows)},
        "seed_ranges": {
            "train": [train_rows[0]["seed"], train_rows[-1]["seed"]],
            "validation": [val_rows[0]["seed"], val_rows[-1]["seed"]],
            "test": [test_rows[0]["seed"], test_rows[-1]["seed"]],
        },
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": f"Adam(peak learning_rate={args.learning_rate})",
        "loss": "sparse categorical cross-entropy",
        "init_seed": args.seed,
        **recipe,
        "gate_features": f"{PENULTIMATE_NOTE} of {min(GATE_FEATURE_IMAGES, len(train_rows))} training images",
        "wall_time_s": round(time.perf_counter() - start, 1),
        "command": "python -m training.train",
        "tensorflow": __import__("tensorflow").__version__,
        "keras": keras.__version__,
    }
    write_results(version_dir, training_meta, evaluation, result)
    log(f"wrote {version_dir} (total {time.perf_counter() - start:.0f} s)")
    try:  # the card is rendered from metadata.json, so card and model cannot drift apart
        log(f"wrote {write_model_card(version_dir)}")
    except Exception as error:  # noqa: BLE001 - the model is already exported
        log(f"model card not written: {error!r}")


def reexport(args: argparse.Namespace) -> None:
    """Re-export a trained version with the current gate code (no retraining)."""
    from training.card import write_model_card
    from training.model import build_model, export_model
    from training.recipe import make_logger

    log = make_logger()
    if args.keep is None:
        raise SystemExit("--reexport needs --keep DIR (written by a training run with --keep)")
    previous = json.loads((args.out / METADATA_FILE).read_text())
    training_meta = previous["training"]
    families = tuple(training_meta["families"])
    model = build_model()
    model.load_weights(args.keep / "model.weights.h5")
    gate = dict(np.load(args.keep / "gate.npz"))
    version_dir = export_model(model, args.out, gate=gate)
    val_rows = synthetic.make_plan("validation", sum(training_meta["counts"]["validation"].values()),
                                   families=families)
    test_rows = synthetic.make_plan("test", sum(training_meta["counts"]["test"].values()),
                                    families=families)
    result = calibrate_and_evaluate(version_dir, val_rows, test_rows, args.processes, log)
    evaluation = {**previous["evaluation"], **result["evaluation"]}
    training_meta["reexported"] = "gate recalibrated with python -m training.train --reexport"
    write_results(version_dir, training_meta, evaluation, result)
    log(f"re-exported {version_dir}; wrote {write_model_card(version_dir)}")


def write_results(version_dir: Path, training_meta: dict[str, Any], evaluation: dict[str, Any],
                  result: dict[str, Any]) -> None:
    """metadata.json's training/evaluation/qc blocks and assets.extra/ (warm-up request, the
    evaluation, the package-image gate figures, the per-image test manifest)."""
    from training.model import write_warmup_requests

    update_metadata(version_dir, training=training_meta, evaluation=evaluation, qc=result["qc"])
    extra = version_dir / "assets.extra"
    extra.mkdir(exist_ok=True)
    write_warmup_requests(version_dir, WARMUP_REQUEST)
    (extra / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")
    (extra / "package_images.json").write_text(json.dumps(result["package_images"], indent=2) + "\n")
    synthetic.write_manifest(extra / "test_manifest.csv", result["test_records"],
                             ("p_infected", "predicted", "qc", "ood_score"))


PENULTIMATE_NOTE = "class means + shrunk shared covariance of the last Dense(100) outputs"


def update_metadata(version_dir: Path, **blocks: Any) -> dict[str, Any]:
    """Merge blocks into metadata.json (decision_threshold stays top-level for the service),
    validated by the service's own VersionMetadata (its qc block included) before it is written."""
    from training.qc import QC_OUTPUTS

    path = Path(version_dir) / METADATA_FILE
    metadata = {**json.loads(path.read_text()), **blocks}
    if "evaluation" in blocks:
        metadata["decision_threshold"] = blocks["evaluation"].get("decision_threshold", 0.5)
    metadata["outputs"] = ["probabilities", *QC_OUTPUTS]
    write_metadata(version_dir, VersionMetadata.model_validate(metadata))
    return metadata


if __name__ == "__main__":
    main()
