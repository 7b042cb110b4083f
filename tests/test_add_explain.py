"""training.add_explain: what it reads back from a committed version, and what it refuses."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import MODEL_REPOSITORY
from training.add_explain import add_explain, max_difference, recover_gate
from training.model import INPUT_KEY, SIGNATURE_NAME, feature_model, load_keras_model
from training.normalization import normalize_intensity
from training.qc import mahalanobis_numpy
from training.synthetic import generate

V1, V2 = MODEL_REPOSITORY / "cpe_cnn" / "1", MODEL_REPOSITORY / "cpe_cnn" / "2"


def _image() -> np.ndarray:
    return generate(31, "influenza", 2, family="halo")[0].astype(np.float32)[None, ..., None]


def test_the_recovered_gate_gives_the_signatures_ood_score() -> None:
    signature = tf.saved_model.load(str(V2)).signatures[SIGNATURE_NAME]
    gate = recover_gate(signature)
    assert gate is not None and gate["means"].shape == (2, 100) and gate["precision"].shape == (100, 100)
    image = _image()
    features, _ = feature_model(load_keras_model(V2))(normalize_intensity(tf.constant(image)), training=False)
    expected = signature(**{INPUT_KEY: tf.constant(image)})["ood_score"].numpy()
    np.testing.assert_allclose(mahalanobis_numpy(features.numpy(), gate), expected, rtol=1e-4)
    assert recover_gate(tf.saved_model.load(str(V1)).signatures[SIGNATURE_NAME]) is None  # v1 has no gate


def test_a_version_compared_with_itself_differs_by_nothing_and_is_not_redone(tmp_path: Path) -> None:
    assert set(max_difference(V1, V1, _image()).values()) == {0.0}
    copy = tmp_path / "cpe_cnn" / "1"
    shutil.copytree(V1, copy)
    with pytest.raises(SystemExit, match="already has an 'explain' signature"):
        add_explain(copy, _image())
