"""The embedded backend: the SavedModel loaded in this worker with `tf.saved_model.load`."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.config import Settings
from service.models.repository import ModelVersion
from service.models.signature import (
    CAM_OUTPUT,
    LOG_ODDS_OUTPUT,
    ModelInfo,
    build_model_info,
    explain_signature,
)

_log = logging.getLogger(__name__)


_devices: list[str] = []


def configure_tensorflow(intra_op_threads: int, inter_op_threads: int) -> list[str]:
    """Set thread pools and GPU memory growth before TF runs anything; return the devices used.

    Once per process: every model version in the worker shares TensorFlow's runtime.
    """
    import tensorflow as tf

    if _devices:
        return _devices
    try:
        if intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
        if inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    except RuntimeError:
        # NOTE: TF refuses once its runtime is up (e.g. a second app in one test process).
        _log.debug("TensorFlow already initialised; thread settings unchanged")
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass
    _devices.extend([gpu.name for gpu in gpus] or [f"/physical_device:CPU:0 ({_cpu_kernels()})"])
    _log.info("TensorFlow %s on %s", tf.__version__, ", ".join(_devices))
    return _devices


def _cpu_kernels() -> str:
    """Which CPU kernels TensorFlow runs (shown in /status): oneDNN is 4-8x faster for convolutions
    on CPUs where stock TensorFlow leaves it off (see service/gunicorn_conf.py)."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return "oneDNN" if _pywrap_util_port.IsMklEnabled() else "Eigen, oneDNN off"
    except (ImportError, AttributeError):
        return "kernels unknown"


class TensorflowLocalBackend:
    """Runs the serving signature of one SavedModel version in-process."""

    name = "tensorflow_local"

    def __init__(self, settings: Settings, version: ModelVersion) -> None:
        self._settings = settings
        self._version = version
        self._function: Any = None
        self._loaded: Any = None
        self.devices: list[str] = []
        self.info: ModelInfo | None = None

    def load(self) -> ModelInfo:
        import tensorflow as tf

        settings = self._settings
        self.devices = configure_tensorflow(settings.tf_intra_op_threads, settings.tf_inter_op_threads)
        version = self._version
        self._loaded = tf.saved_model.load(str(version.path))
        signature_name = version.metadata.signature_name or settings.signature_name
        if signature_name not in self._loaded.signatures:
            raise ValueError(
                f"{version.path} has no signature '{signature_name}' "
                f"(has {sorted(self._loaded.signatures)})"
            )
        self._function = self._loaded.signatures[signature_name]
        _, input_specs = self._function.structured_input_signature
        input_shapes = {key: spec.shape.as_list() for key, spec in input_specs.items()}
        output_keys = list(self._function.structured_outputs)
        explain = explain_signature({name: list(function.structured_outputs)
                                     for name, function in self._loaded.signatures.items()})
        self.info = build_model_info(version, signature_name, input_shapes, output_keys, explain)
        _log.info("loaded %s version %d from %s", version.name, version.version, version.path)
        return self.info

    def predict(self, batch: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        import tensorflow as tf

        assert self.info is not None, "load() first"
        outputs = self._function(**{self.info.input_key: tf.constant(batch, dtype=tf.float32)})
        wanted = (self.info.output_key, *self.info.extra_outputs)
        return {name: outputs[name].numpy() for name in wanted}

    def explain(self, batch: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        """Run the version's explain signature (Grad-CAM maps and log-odds of the positive class)."""
        import tensorflow as tf

        assert self.info is not None and self.info.explain_signature is not None, "an explainable version"
        function = self._loaded.signatures[self.info.explain_signature]
        outputs = function(**{self.info.input_key: tf.constant(batch, dtype=tf.float32)})
        return {name: outputs[name].numpy() for name in (CAM_OUTPUT, LOG_ODDS_OUTPUT)}

    def reachable(self) -> bool:
        """In-process: reachable whenever loaded."""
        return True

    def close(self) -> None:
        self._function = None
        self._loaded = None
