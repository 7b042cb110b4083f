"""The training recipe shared by `make train`, `training.lofo` and `training.finetune`.

The paper's head is three sigmoid Dense(100) layers; with default init and a flat learning
rate it sits on the chance plateau for a long, seed-dependent time. The recipe that leaves it
reliably: LSUV-style data-dependent initialisation (sigmoids start in their sensitive range),
a linear learning-rate warm-up followed by cosine decay, and cheap label-preserving
augmentation of the normalised cache (horizontal / vertical flips = 180 degree rotation, which
keep the 1024x1360 shape, plus small additive noise). The epoch with the lowest validation loss
is kept and a softmax temperature fitted on validation is folded into the last layer.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from training import synthetic

Log = Callable[[str], None]


def make_logger(start: float | None = None) -> Log:
    """print() with elapsed seconds, flushed (logs of background runs stay readable)."""
    start = time.perf_counter() if start is None else start

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f} s] {message}", flush=True)

    return log


def add_reduced_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Data and optimiser flags shared by the reduced runs (`training.lofo`, `training.seeds`).

    The defaults are the reduced settings of the committed training/results/ files, so the
    bare commands reproduce them (and a LOFO merge with them is accepted).
    """
    parser.add_argument("--families", default="all", help="comma-separated, or 'all'")
    parser.add_argument("--train-count", type=int, default=600)
    parser.add_argument("--val-count", type=int, default=60)
    parser.add_argument("--test-count", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--processes", type=int, default=2)


def load_set(rows: Sequence[dict[str, Any]], processes: int, log: Log, name: str, batch: int = 8):
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
            log(f"{name}: {i + 1}/{len(rows)} images")
    y = np.array([synthetic.LABELS.index(r["label"]) for r in records], np.int32)
    return x, y, records


def predict(model, x: np.ndarray, batch_size: int, outputs: str = "probabilities") -> np.ndarray:
    """Model outputs over a float16 cache, always at the training batch size (last batch padded)."""
    out = []
    for s in range(0, len(x), batch_size):
        chunk = x[s : s + batch_size].astype(np.float32)
        n = len(chunk)
        if n < batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]), np.float32)])
        result = model(chunk, training=False)
        if isinstance(result, (list, tuple)):
            result = result[0] if outputs == "features" else result[1]
        out.append(np.asarray(result)[:n])
    return np.concatenate(out)


def nll(p1: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(np.where(y == 1, p1, 1 - p1), 1e-7, 1.0))))


def fit_temperature(p1: np.ndarray, y: np.ndarray) -> float:
    """Temperature minimising validation NLL of softmax(logits / T) (grid, T in [0.5, 4])."""
    logit = np.log(np.clip(p1, 1e-7, 1)) - np.log(np.clip(1 - p1, 1e-7, 1))
    grid = np.exp(np.linspace(np.log(0.5), np.log(4.0), 61))
    losses = [nll(1 / (1 + np.exp(-logit / t)), y) for t in grid]
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


def warmup_cosine(peak: float, total_steps: int, warmup_steps: int):
    """Linear warm-up to `peak`, then cosine decay to 5% of it."""
    import keras

    class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            import tensorflow as tf

            step = tf.cast(step, tf.float32)
            warm = peak * (step + 1.0) / float(max(warmup_steps, 1))
            progress = tf.clip_by_value(
                (step - warmup_steps) / float(max(total_steps - warmup_steps, 1)), 0.0, 1.0)
            cosine = peak * (0.05 + 0.95 * 0.5 * (1.0 + tf.cos(math.pi * progress)))
            return tf.where(step < warmup_steps, warm, cosine)

        def get_config(self) -> dict[str, Any]:
            return {"peak": peak, "total_steps": total_steps, "warmup_steps": warmup_steps}

    return WarmupCosine()


def augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flips (and so 180 degree rotation) and small Gaussian noise, per image, in place."""
    for i in range(len(batch)):
        if rng.random() < 0.5:
            batch[i] = batch[i, ::-1]
        if rng.random() < 0.5:
            batch[i] = batch[i, :, ::-1]
    sigma = rng.uniform(0.0, 0.03)
    if sigma > 0.005:
        batch += np.float32(sigma) * rng.standard_normal(batch.shape, dtype=np.float32)
    return batch


def fit(
    model,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    log: Log,
    init: bool = True,
    warmup_fraction: float = 0.3,
) -> dict[str, Any]:
    """Train in place with the recipe; keep the best validation epoch; fold a temperature in."""
    import keras

    bs = batch_size
    steps = max(len(x_train) // bs, 1)

    class Batches(keras.utils.PyDataset):
        """Shuffled, augmented fixed-size batches from the float16 cache (remainder dropped)."""

        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(x_train))

        def __len__(self) -> int:
            return steps

        def __getitem__(self, i: int):
            idx = np.sort(self.order[i * bs : (i + 1) * bs])
            return augment(x_train[idx].astype(np.float32), self.rng), y_train[idx]

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(len(x_train))

    schedule = warmup_cosine(learning_rate, epochs * steps, int(warmup_fraction * steps))
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if init:
        init_idx = np.random.default_rng(seed).choice(len(x_train), min(bs * 2, len(x_train)), replace=False)
        data_dependent_init(model, x_train[np.sort(init_idx)].astype(np.float32))
    best: tuple[float, Any, int] = (np.inf, None, -1)
    history = []
    batches = Batches()
    for epoch in range(1, epochs + 1):
        result = model.fit(batches, epochs=1, verbose=2)
        p_val = predict(model, x_val, bs)[:, 1]
        val_loss = nll(p_val, y_val)
        history.append({
            "epoch": epoch,
            "loss": round(float(result.history["loss"][0]), 4),
            "accuracy": round(float(result.history["accuracy"][0]), 4),
            "val_loss": round(val_loss, 4),
            "val_accuracy": round(float(((p_val >= 0.5) == (y_val == 1)).mean()), 4),
        })
        log(f"epoch {epoch}/{epochs}: {history[-1]}")
        if val_loss < best[0]:
            best = (val_loss, model.get_weights(), epoch)
    model.set_weights(best[1])
    p_val = predict(model, x_val, bs)[:, 1]
    temperature = fit_temperature(p_val, y_val)
    last = model.get_layer("probabilities")
    kernel, bias = last.get_weights()
    last.set_weights([kernel / temperature, bias / temperature])
    log(f"kept epoch {best[2]} (val_loss {best[0]:.4f}); temperature {temperature:.3f}")
    return {
        "history": history,
        "selected_epoch": best[2],
        "temperature": round(temperature, 4),
        "schedule": f"linear warm-up {int(warmup_fraction * steps)} steps to {learning_rate}, "
                    "cosine decay to 5%",
        "augmentation": "flips (h, v, so 180 degree rotation), additive noise sigma U(0, 0.03)",
    }
