"""The paper's CPE CNN (Wang et al. 2020) and its export to TF Serving's repository layout.

The serving signature takes raw intensities (float32, 1024x1360x1) and normalises them in the
graph, so clients and backends never re-implement the preprocessing.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from service.models.metadata import VersionMetadata, write_metadata
from service.preprocessing import PREPROCESSING_VERSION, preprocessing_hash
from training.gradcam import EXPLAIN_SIGNATURE, cam_geometry, make_explain
from training.normalization import HIGH_PERCENTILE, LOW_PERCENTILE, normalize_intensity

INPUT_HEIGHT = 1024
INPUT_WIDTH = 1360
CLASS_NAMES = ("uninfected", "infected")
INPUT_KEY = "image"
OUTPUT_KEY = "probabilities"
SIGNATURE_NAME = "serving_default"
PENULTIMATE = "dense3"


def build_model(seed: int = 0) -> keras.Model:
    """Conv(20,7)/pool10 -> Conv(25,5)/pool6 -> Conv(30,3)/pool6 -> 3xDense(100) -> softmax."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(INPUT_HEIGHT, INPUT_WIDTH, 1), name=INPUT_KEY)
    x = keras.layers.Conv2D(20, 7, padding="valid", activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(10, name="pool1")(x)
    x = keras.layers.Conv2D(25, 5, padding="valid", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(6, name="pool2")(x)
    x = keras.layers.Conv2D(30, 3, padding="valid", activation="relu", name="conv3")(x)
    x = keras.layers.MaxPooling2D(6, name="pool3")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for index in range(3):
        x = keras.layers.Dense(100, activation="sigmoid", name=f"dense{index + 1}")(x)
    outputs = keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name=OUTPUT_KEY)(x)
    return keras.Model(inputs, outputs, name="cpe_cnn")


def export_model(
    model: keras.Model,
    version_dir: Path,
    *,
    model_name: str = "cpe_cnn",
    classes: tuple[str, ...] = CLASS_NAMES,
    extra_metadata: dict[str, Any] | None = None,
    gate: dict[str, Any] | None = None,
) -> Path:
    """Write `version_dir` as a SavedModel with a normalising `serving_default` + metadata.json.

    With `gate` (`training.qc.fit_mahalanobis` of the training features) the signature also
    returns the QC outputs `training.qc.QC_OUTPUTS`, computed in the graph so every backend
    applies the same gate. A second signature, `explain`, answers the Grad-CAM map of the
    positive class (`training.gradcam`). The directory is written under a temporary name and renamed, so a
    repository watcher never sees a half-written version.
    """
    version_dir = Path(version_dir)
    _, height, width, channels = model.input_shape
    staging = version_dir.with_name(f".{version_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)

    if gate is None:
        tracked = model

        def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
            return {OUTPUT_KEY: model(normalize_intensity(image), training=False)}
    else:
        from training.qc import ood_score, quality_measures

        tracked = feature_model(model)
        means = tf.constant(gate["means"], tf.float32)
        precision = tf.constant(gate["precision"], tf.float32)

        def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
            normalised = normalize_intensity(image)
            features, probabilities = tracked(normalised, training=False)
            return {
                OUTPUT_KEY: probabilities,
                "ood_score": ood_score(features, means, precision),
                **quality_measures(image, normalised),
            }

    archive = keras.export.ExportArchive()
    archive.track(tracked)
    archive.add_endpoint(
        name=SIGNATURE_NAME,
        fn=serve,
        input_signature=[
            tf.TensorSpec([None, height, width, channels], tf.float32, name=INPUT_KEY)
        ],
    )
    # Grad-CAM of the positive class, in the graph (training.gradcam): every backend can explain.
    explain = make_explain(model, len(classes) - 1, OUTPUT_KEY)
    geometry = cam_geometry(model) if explain is not None else None
    if explain is not None:
        archive.add_endpoint(
            name=EXPLAIN_SIGNATURE,
            fn=explain,
            input_signature=[
                tf.TensorSpec([None, height, width, channels], tf.float32, name=INPUT_KEY)
            ],
        )
    archive.write_out(str(staging), verbose=False)

    metadata: dict[str, Any] = {
        "name": model_name,
        "version": int(version_dir.name),
        "classes": list(classes),
        "positive_class": classes[-1],
        "signature_name": SIGNATURE_NAME,
        "input": {
            "tensor": INPUT_KEY,
            "height": height,
            "width": width,
            "channels": channels,
            "dtype": "float32",
            "units": "raw intensity (any bit depth); normalised inside the graph",
        },
        "output": {"tensor": OUTPUT_KEY},
        "decision_threshold": 0.5,
        "preprocessing": {
            "version": PREPROCESSING_VERSION,
            "sha256": preprocessing_hash(),
            "normalization": f"per-image percentile {LOW_PERCENTILE}-{HIGH_PERCENTILE} in graph",
        },
        "parameters": int(model.count_params()),
        **({"explain": geometry} if geometry is not None else {}),
    }
    metadata.update(extra_metadata or {})
    # Validated by the same typed model the service reads it with: train and serve cannot drift.
    write_metadata(staging, VersionMetadata.model_validate(metadata))
    shutil.rmtree(version_dir, ignore_errors=True)
    staging.rename(version_dir)
    return version_dir


def feature_model(model: keras.Model) -> keras.Model:
    """The same layers, returning (penultimate Dense(100) features, probabilities)."""
    return keras.Model(model.inputs, [model.get_layer(PENULTIMATE).output, model.output])


def write_warmup_requests(version_dir: Path, batch: Any, *, model_name: str = "cpe_cnn") -> Path:
    """Write TF Serving's `assets.extra/tf_serving_warmup_requests` (PredictionLog TFRecords).

    TF Serving and this service replay them before a version takes traffic. `batch` is an
    array, or a (shape, value) pair for a compact request: a TensorProto with one float_val
    fills the whole shape (TensorProto semantics), so a 1024x1360 request costs bytes, not the
    5.6 MB that would break the committed model's 5 MB budget.
    """
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SIGNATURE_NAME)
    )
    if isinstance(batch, tuple):
        shape, value = batch
        dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in shape]
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[float(value)],
                                       tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims))
    else:
        proto = tf.make_tensor_proto(batch, dtype=tf.float32)
    request.inputs[INPUT_KEY].CopyFrom(proto)
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    path = Path(version_dir) / "assets.extra" / "tf_serving_warmup_requests"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(log.SerializeToString())
    return path


def load_keras_model(version_dir: Path) -> keras.Model:
    """The paper CNN with the weights of an exported version (matched by variable name)."""
    model = build_model()
    saved = tf.saved_model.load(str(version_dir))
    by_name = {v.name.split(":")[0]: v for v in saved.variables}
    for weight in model.weights:
        weight.assign(by_name[weight.path].numpy())
    return model


def latest_version(model_root: Path) -> Path:
    """The highest-numbered version directory holding a saved_model.pb."""
    versions = [p for p in Path(model_root).iterdir()
                if p.name.isdigit() and (p / "saved_model.pb").is_file()]
    if not versions:
        raise FileNotFoundError(f"no exported version under {model_root}")
    return max(versions, key=lambda p: int(p.name))
