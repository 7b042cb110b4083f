"""Fine-tune the latest committed version on a lab's labelled fields and export a new version.

    python -m training.finetune --manifest labels.csv --out model_repository/cpe_cnn/3

labels.csv: path,label[,plate,well,site]; label infected/uninfected or 1/0; relative paths are
resolved against the CSV's folder. Sites of one well stay on one side of the train/validation
split. Starts from the base version's weights (no re-initialisation, lower learning rate),
mixes in synthetic replay images so the model does not forget the other renderings, refits
the OOD gate on the new features and recalibrates the QC thresholds on held-out images. The
exported version has the same signature and metadata blocks as `make train`'s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.models.metadata import METADATA_FILE
from training import synthetic
from training.families import FAMILIES

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FINETUNE_SEED = 20200503


def _normalised(images: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    from training.normalization import normalize_intensity

    return np.concatenate([
        normalize_intensity(tf.constant(images[s : s + 8])).numpy().astype(np.float16)
        for s in range(0, len(images), 8)
    ]) if len(images) else np.zeros((0, *images.shape[1:]), np.float16)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="new version directory, e.g. .../cpe_cnn/3")
    parser.add_argument("--base", type=Path, default=None,
                        help="version directory to start from (default: latest under model_repository/cpe_cnn)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--replay-count", type=int, default=100,
                        help="synthetic images (all families) mixed into training; 0: none")
    parser.add_argument("--calibration-count", type=int, default=100,
                        help="synthetic validation images added to the QC calibration; 0: none")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    from training.manifest import load_images, read_labelled, split_by_well
    from training.model import export_model, latest_version, load_keras_model
    from training.qc import QC_OUTPUTS, apply_checks, calibrate_checks, fit_mahalanobis, qc_block
    from training.recipe import fit, load_set, make_logger, predict
    from training.signature import load_signature, run_images, run_rows
    from training.train import update_metadata

    log = make_logger()
    start = time.perf_counter()
    base = args.base or latest_version(Path("model_repository/cpe_cnn"))
    rows = read_labelled(args.manifest)
    raw = load_images(rows, synthetic.HEIGHT, synthetic.WIDTH)
    labels = np.array([r["label"] for r in rows], np.int32)
    train_idx, val_idx = split_by_well(rows)
    x_lab = _normalised(raw)
    log(f"{len(rows)} labelled images ({labels.sum()} infected); base {base}")
    x_train, y_train = x_lab[train_idx], labels[train_idx]
    if args.replay_count:
        replay = synthetic.make_plan("train", args.replay_count, families=FAMILIES)
        xr, yr, _ = load_set(replay, args.processes, log, "replay")
        x_train, y_train = np.concatenate([x_train, xr]), np.concatenate([y_train, yr])
    model = load_keras_model(base)
    recipe = fit(model, x_train, y_train, x_lab[val_idx], labels[val_idx], epochs=args.epochs,
                 batch_size=args.batch_size, learning_rate=args.learning_rate,
                 seed=FINETUNE_SEED, log=log, init=False, warmup_fraction=0.1)
    from training.model import feature_model

    features = predict(feature_model(model), x_train, args.batch_size, outputs="features")
    gate = fit_mahalanobis(features, y_train)
    version_dir = export_model(model, args.out, gate=gate)
    serve = load_signature(version_dir)
    lab_out = run_images(serve, raw[val_idx])
    calibration = {k: lab_out[k] for k in QC_OUTPUTS}
    if args.calibration_count:
        rows_cal = synthetic.make_plan("validation", args.calibration_count, families=FAMILIES)
        syn_out, _ = run_rows(serve, rows_cal, args.processes)
        calibration = {k: np.concatenate([calibration[k], syn_out[k]]) for k in QC_OUTPUTS}
    checks = calibrate_checks(calibration)
    flagged = np.array([s != "ok" for s in apply_checks(checks, lab_out)["status"]])
    p_val = lab_out["probabilities"][:, 1]
    accuracy = float(((p_val >= 0.5) == (labels[val_idx] == 1)).mean())
    base_meta = json.loads((Path(base) / METADATA_FILE).read_text())
    update_metadata(
        version_dir,
        qc=qc_block(checks, float(flagged.mean()), len(flagged), base_meta.get("qc", {}).get("non_phase_contrast", {})),
        finetune={
            "base": {"version": base_meta.get("version"), "path": str(base)},
            "manifest": str(args.manifest),
            "manifest_sha256": hashlib.sha256(Path(args.manifest).read_bytes()).hexdigest(),
            "n_images": len(rows), "n_train": len(train_idx), "n_validation": len(val_idx),
            "validation_is_training": sorted(train_idx) == sorted(val_idx),
            "validation_accuracy": round(accuracy, 4),
            "replay_count": args.replay_count,
            "calibration_count": args.calibration_count,
            "epochs": args.epochs, "learning_rate": args.learning_rate, **recipe,
            "wall_time_s": round(time.perf_counter() - start, 1),
            "command": "python -m training.finetune",
            "note": "QC thresholds recalibrated on the held-out lab images (plus synthetic "
                    "calibration images); non_phase_contrast figures are the base version's",
        },
    )
    log(f"exported {version_dir}: validation accuracy {accuracy:.3f} on {len(val_idx)} images")


if __name__ == "__main__":
    main()
