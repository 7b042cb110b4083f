"""Grad-CAM (Selvaraju et al. 2017) as an `explain` signature exported beside `serving_default`.

The map is computed inside the SavedModel, so the embedded backend and TF Serving (over gRPC,
`signature_name="explain"`) answer the same map for the same pixels, and the service needs
no model code: it calls a signature, as it does for predictions.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import keras
import tensorflow as tf

from service.models.signature import CAM_OUTPUT, EXPLAIN_SIGNATURE, LOG_ODDS_OUTPUT
from training.normalization import normalize_intensity

__all__ = ["CAM_OUTPUT", "EXPLAIN_SIGNATURE", "LOG_ODDS_OUTPUT", "make_explain"]



def make_explain(model: keras.Model, positive_index: int,
                 output_key: str) -> Callable[[tf.Tensor], dict[str, tf.Tensor]] | None:
    """The `explain` function: raw image batch -> {cam (n, h, w) in [0, 1], log_odds, probabilities};
    None for a model it cannot split (no Conv2D, a branching head, no softmax Dense at the end).

    The model is split at its last Conv2D (`conv3` in the paper CNN): the head (every later
    layer, then the softmax layer's logits) runs under the tape on the watched activations. The
    class score differentiated is the positive class's log-odds (its logit minus the
    log-sum-exp of the others), not its softmax probability: a confident call (p = 0.99999)
    has a vanishing probability gradient and would give an empty or noisy map.
    """
    layers = model.layers
    convs = [index for index, layer in enumerate(layers) if isinstance(layer, keras.layers.Conv2D)]
    softmax_layer = layers[-1]
    softmax_head = (isinstance(softmax_layer, keras.layers.Dense)
                    and softmax_layer.activation is keras.activations.softmax)
    if not convs or not softmax_head or not _chain(layers[convs[-1]:]):
        return None
    split = convs[-1]
    trunk = keras.Model(model.input, layers[split].output)
    head_layers = layers[split + 1:-1]

    def explain(image: tf.Tensor) -> dict[str, tf.Tensor]:
        activations = trunk(normalize_intensity(image), training=False)
        with tf.GradientTape() as tape:
            tape.watch(activations)
            x = activations
            for layer in head_layers:
                x = layer(x, training=False)
            logits = tf.matmul(x, softmax_layer.kernel) + softmax_layer.bias
            others = tf.concat([logits[:, :positive_index], logits[:, positive_index + 1:]], axis=1)
            log_odds = logits[:, positive_index] - tf.reduce_logsumexp(others, axis=1)
        # Rows are independent, so the gradient of the sum is each row's own gradient.
        gradients = tape.gradient(log_odds, activations)
        weights = tf.reduce_mean(gradients, axis=[1, 2], keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1))
        peak = tf.reduce_max(cam, axis=[1, 2], keepdims=True)
        return {
            CAM_OUTPUT: tf.math.divide_no_nan(cam, peak),  # all zeros when nothing speaks for the class
            LOG_ODDS_OUTPUT: log_odds,
            output_key: tf.nn.softmax(logits),
        }

    return explain


def _chain(layers: list[keras.layers.Layer]) -> bool:
    """Whether each layer takes exactly the previous one's output (the head can be replayed)."""
    try:
        return all(layer.input is previous.output for previous, layer in itertools.pairwise(layers))
    except (AttributeError, ValueError):  # a layer with several inputs or outputs
        return False


_POINTWISE = (keras.layers.Activation, keras.layers.BatchNormalization, keras.layers.Dropout, keras.layers.ReLU)


def cam_geometry(model: keras.Model) -> dict[str, object] | None:
    """metadata.json's `explain` block: the last Conv2D's name and where its cells' receptive
    fields are centred on the input ([y, x] origin and stride, in pixels), from the kernel sizes
    and strides before it; None when a layer on the way pads ('same') or is not a plain
    conv/pool (the map is then stretched over the input)."""
    convs = [index for index, layer in enumerate(model.layers) if isinstance(layer, keras.layers.Conv2D)]
    if not convs:
        return None
    origin, stride = [0.0, 0.0], [1.0, 1.0]  # pixel i's centre is at i (0-based, row/column index)
    for layer in model.layers[1:convs[-1] + 1]:
        if isinstance(layer, keras.layers.Conv2D):
            size, steps = layer.kernel_size, layer.strides
        elif isinstance(layer, keras.layers.MaxPooling2D | keras.layers.AveragePooling2D):
            size, steps = layer.pool_size, layer.strides
        elif isinstance(layer, _POINTWISE):
            continue  # no change of geometry
        else:
            return None
        if layer.padding != "valid":
            return None
        for axis in (0, 1):
            origin[axis] += (size[axis] - 1) / 2 * stride[axis]
            stride[axis] *= steps[axis]
    return {"layer": model.layers[convs[-1]].name, "cell_origin_px": origin, "cell_stride_px": stride}
