"""`make train`: regenerate the synthetic data, train the paper CNN, evaluate, export.

    python -m training.train            # writes model_repository/cpe_cnn/1

Steps (all deterministic from fixed seeds; ~25-30 min on 2 CPU cores):

1. Generate the training (seeds 0..), validation (1_000_000..) and test (2_000_000..) sets with
   `training.synthetic` (2 processes).
2. Each image goes through `service.preprocessing.prepare` (the preprocessing shared with
   serving: raw intensities, float32, 1024x1360x1) and `training.normalization.
   normalize_intensity` (the function the exported signature runs in-graph). Normalised images
   are cached in memory as float16.
3. Train `training.model.build_model()` with Adam at a fixed batch size; keep the epoch with
   the lowest validation loss; fit a softmax temperature on the validation set and fold it into
   the last Dense layer (the architecture is unchanged).
4. Evaluate on the held-out test seeds and export with `training.model.export_model`, the
   metrics in metadata.json's "evaluation" block; the test manifest (with predictions) and
   the metrics go to `<version>/assets.extra/`.

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

from training import synthetic
from training.evaluate import compute_metrics, write_model_card

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_OUT = Path("model_repository/cpe_cnn/1")
TRAIN_SEED = 20200501


def _log(message: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:7.1f} s] {message}", flush=True)


def load_set(rows, processes: int, start: float, name: str, batch: int = 8):
    """Generate, prepare and normalise a set: (x float16 (N,H,W,1), y int (N,), records)."""
    import tensorflow as tf

    from service.preprocessing import prepare
    from training.normalization import normalize_intensity

    h, w = synthetic.HEIGHT, synthetic.WIDTH
    x = np.empty((len(rows), h, w, 1), np.float16)
    records: list[dict[str, Any]] = []
    buffer: list[np.ndarray] = []
    for i, (pixels, record) in enumerate(synthetic.iter_set(rows, processes)):
        buffer.append(prepare(pixels, h, w, 1))
        records.append(record)
        if len(buffer) == batch or i == len(rows) - 1:
            normalised = normalize_intensity(tf.constant(np.stack(buffer))).numpy()
            x[i + 1 - len(buffer) : i + 1] = normalised.astype(np.float16)
            buffer = []
        if (i + 1) % 200 == 0 or i == len(rows) - 1:
            _log(f"{name}: {i + 1}/{len(rows)} images", start)
    y = np.array([synthetic.LABELS.index(r["label"]) for r in records], np.int32)
    return x, y, records


def predict(model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Softmax outputs, always at the training batch size (last batch padded)."""
    out = []
    for s in range(0, len(x), batch_size):
        chunk = x[s : s + batch_size].astype(np.float32)
        n = len(chunk)
        if n < batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]), np.float32)])
        out.append(model(chunk, training=False).numpy()[:n])
    return np.concatenate(out)


def _nll(p1: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(np.where(y == 1, p1, 1 - p1), 1e-7, 1.0))))


def fit_temperature(p1: np.ndarray, y: np.ndarray) -> float:
    """Temperature minimising validation NLL of softmax(logits / T) (grid, T in [0.5, 4])."""
    logit = np.log(np.clip(p1, 1e-7, 1)) - np.log(np.clip(1 - p1, 1e-7, 1))
    grid = np.exp(np.linspace(np.log(0.5), np.log(4.0), 61))
    losses = [_nll(1 / (1 + np.exp(-logit / t)), y) for t in grid]
    return float(grid[int(np.argmin(losses))])


def data_dependent_init(model, x_batch: np.ndarray) -> None:
    """LSUV-style rescaling of the initial weights (architecture unchanged).

    With Glorot init the conv features reaching the sigmoid head are tiny and nearly constant,
    and training sits on the chance plateau for hundreds of steps. Scale each conv kernel so
    its ReLU output has unit RMS on a batch, then each dense layer so its pre-activations have
    unit spread and zero mean per unit (sigmoids start in their sensitive range).
    """
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            probe = keras.Model(model.inputs, layer.output)
            rms = float(np.sqrt(np.mean(np.square(probe(x_batch, training=False).numpy()))))
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel / max(rms, 1e-6), np.zeros_like(bias)])
        elif isinstance(layer, keras.layers.Dense) and layer.name != "probabilities":
            probe = keras.Model(model.inputs, layer.input)
            inputs = probe(x_batch, training=False).numpy()
            kernel, bias = layer.get_weights()
            pre = inputs @ kernel
            kernel = kernel / max(float(pre.std()), 1e-6)
            layer.set_weights([kernel, -(inputs @ kernel).mean(axis=0)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--train-count", type=int, default=800)
    parser.add_argument("--val-count", type=int, default=96)
    parser.add_argument("--test-count", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    start = time.perf_counter()

    import keras

    from training.model import build_model, export_model

    train_rows = synthetic.make_plan("train", args.train_count)
    val_rows = synthetic.make_plan("validation", args.val_count)
    test_rows = synthetic.make_plan("test", args.test_count)
    x_train, y_train, _ = load_set(train_rows, args.processes, start, "train")
    x_val, y_val, _ = load_set(val_rows, args.processes, start, "validation")

    bs = args.batch_size

    class Batches(keras.utils.PyDataset):
        """Shuffled fixed-size batches from the float16 cache (remainder dropped)."""

        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng(TRAIN_SEED)
            self.order = self.rng.permutation(len(x_train))

        def __len__(self) -> int:
            return len(x_train) // bs

        def __getitem__(self, i: int):
            idx = np.sort(self.order[i * bs : (i + 1) * bs])
            return x_train[idx].astype(np.float32), y_train[idx]

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(len(x_train))

    model = build_model(seed=TRAIN_SEED % 2**31)
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    batches = Batches()
    init_idx = np.random.default_rng(TRAIN_SEED).choice(len(x_train), bs, replace=False)
    data_dependent_init(model, x_train[np.sort(init_idx)].astype(np.float32))
    best = (np.inf, None, -1)
    history = []
    for epoch in range(1, args.epochs + 1):
        fit = model.fit(batches, epochs=1, verbose=2)
        p_val = predict(model, x_val, bs)[:, 1]
        val_loss = _nll(p_val, y_val)
        val_acc = float(((p_val >= 0.5) == (y_val == 1)).mean())
        history.append({
            "epoch": epoch,
            "loss": round(float(fit.history["loss"][0]), 4),
            "accuracy": round(float(fit.history["accuracy"][0]), 4),
            "val_loss": round(val_loss, 4),
            "val_accuracy": round(val_acc, 4),
        })
        _log(f"epoch {epoch}/{args.epochs}: {history[-1]}", start)
        if val_loss < best[0]:
            best = (val_loss, model.get_weights(), epoch)
    model.set_weights(best[1])
    _log(f"kept epoch {best[2]} (val_loss {best[0]:.4f})", start)

    # Temperature scaling folded into the last layer: softmax(Wx+b)/T == softmax((W/T)x + b/T).
    p_val = predict(model, x_val, bs)[:, 1]
    temperature = fit_temperature(p_val, y_val)
    last = model.get_layer("probabilities")
    kernel, bias = last.get_weights()
    last.set_weights([kernel / temperature, bias / temperature])
    p_val_t = predict(model, x_val, bs)[:, 1]
    _log(f"temperature {temperature:.3f}: val NLL {_nll(p_val, y_val):.4f} -> {_nll(p_val_t, y_val):.4f}", start)
    del x_train

    x_test, _, test_records = load_set(test_rows, args.processes, start, "test")
    p_test = predict(model, x_test, bs)[:, 1]
    del x_test
    evaluation = compute_metrics(test_records, p_test)
    evaluation.update({
        "split": "test",
        "seeds": [test_rows[0]["seed"], test_rows[-1]["seed"]],
        "generator_version": synthetic.GENERATOR_VERSION,
        "decision_threshold": 0.5,
        "note": "synthetic images only; says nothing about real MDCK images",
    })
    _log(f"test: accuracy {evaluation['accuracy']}, ECE {evaluation['ece_10_bins']}, "
         f"errors {evaluation['errors']}/{evaluation['n_images']}", start)

    wall = time.perf_counter() - start
    training_meta = {
        "data": "synthetic (training.synthetic)",
        "generator_version": synthetic.GENERATOR_VERSION,
        "counts": {
            "train": dict(Counter(r["kind"] for r in train_rows)),
            "validation": dict(Counter(r["kind"] for r in val_rows)),
            "test": dict(Counter(r["kind"] for r in test_rows)),
        },
        "seed_ranges": {
            "train": [train_rows[0]["seed"], train_rows[-1]["seed"]],
            "validation": [val_rows[0]["seed"], val_rows[-1]["seed"]],
            "test": [test_rows[0]["seed"], test_rows[-1]["seed"]],
        },
        "epochs": args.epochs,
        "selected_epoch": best[2],
        "batch_size": bs,
        "optimizer": f"Adam(learning_rate={args.learning_rate})",
        "loss": "sparse categorical cross-entropy",
        "temperature": round(temperature, 4),
        "init_seed": TRAIN_SEED,
        "history": history,
        "wall_time_s": round(wall, 1),
        "command": "python -m training.train",
        "tensorflow": __import__("tensorflow").__version__,
        "keras": keras.__version__,
    }
    version_dir = export_model(
        model, args.out, extra_metadata={"training": training_meta, "evaluation": evaluation}
    )
    extra = version_dir / "assets.extra"
    extra.mkdir(exist_ok=True)
    (extra / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")
    for record, p in zip(test_records, p_test):
        record["p_infected"] = round(float(p), 5)
        record["predicted"] = synthetic.LABELS[int(p >= 0.5)]
    synthetic.write_manifest(extra / "test_manifest.csv", test_records, ("p_infected", "predicted"))
    _log(f"exported {version_dir} (total {time.perf_counter() - start:.0f} s)", start)
    try:  # the card is rendered from metadata.json, so card and model cannot drift apart
        card = write_model_card(version_dir)
        _log(f"wrote {card}", start)
    except Exception as error:  # noqa: BLE001 - the model is already exported
        _log(f"model card not written: {error!r}", start)


if __name__ == "__main__":
    main()
