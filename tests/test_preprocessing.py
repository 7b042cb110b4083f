"""One preprocessing path: what training feeds the CNN equals what serving feeds it for the
same pixels, whatever the file format, and normalisation is robust to bit depth."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from service.codecs.images import decode_image
from service.preprocessing import PREPROCESSING_VERSION, prepare, to_gray
from tests.conftest import MODEL_REPOSITORY, tiff_bytes
from training.normalization import normalize_intensity
from training.synthetic import generate


@pytest.mark.parametrize("seed, kind, severity", [(2_000_900, "influenza", 2), (2_000_901, "syncytia", 0),
                                                  (2_000_902, "uninfected", 0)])
def test_training_input_equals_serving_input_for_the_same_image(seed: int, kind: str, severity: int) -> None:
    pixels, _ = generate(seed, kind, severity)
    training_input = prepare(pixels, 1024, 1360, 1)  # what training/train.py::load_set does
    for encoded in (tiff_bytes(pixels), tiff_bytes(pixels, compression="zlib")):
        serving_input = prepare(decode_image(encoded), 1024, 1360, 1)
        np.testing.assert_array_equal(serving_input, training_input)
    normalised_training = normalize_intensity(tf.constant(training_input[np.newaxis])).numpy()
    normalised_serving = normalize_intensity(tf.constant(serving_input[np.newaxis])).numpy()
    np.testing.assert_array_equal(normalised_serving, normalised_training)


def test_png_of_an_8bit_field_gives_the_training_input() -> None:
    pixels, record = generate(2_000_903, "influenza", 3)
    as_8bit = (pixels >> 8).astype(np.uint8) if pixels.dtype == np.uint16 else pixels
    buffer = io.BytesIO()
    Image.fromarray(as_8bit).save(buffer, format="PNG")
    np.testing.assert_array_equal(prepare(decode_image(buffer.getvalue()), 1024, 1360, 1),
                                  prepare(as_8bit, 1024, 1360, 1))


def test_normalisation_is_the_same_for_8_12_and_16_bit_versions_of_a_field(rng: np.random.Generator) -> None:
    field = rng.uniform(0, 1, size=(1, 256, 320, 1)).astype(np.float32)
    eight = np.round(field * 255)
    twelve = eight * 16  # the same scene with 12-bit range: never divided by 65535
    sixteen = eight * 257
    out = [normalize_intensity(tf.constant(x)).numpy() for x in (eight, twelve, sixteen)]
    np.testing.assert_allclose(out[1], out[0], atol=1e-5)
    np.testing.assert_allclose(out[2], out[0], atol=1e-5)
    assert 0.4 < float(np.median(out[0])) < 0.6  # scaled to the robust range, not to dtype max


def test_flat_image_does_not_divide_by_zero() -> None:
    out = normalize_intensity(tf.constant(np.full((1, 64, 64, 1), 1234.0, np.float32))).numpy()
    assert np.isfinite(out).all() and np.all(out == 0)


def test_rgb_to_gray_uses_luma_and_resize_keeps_16bit_range() -> None:
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 1] = 200
    np.testing.assert_allclose(to_gray(rgb), 0.587 * 200, rtol=1e-6)
    wide = np.full((512, 680), 60000, np.uint16)
    assert prepare(wide, 1024, 1360, 1).max() == pytest.approx(60000)


def test_committed_model_records_the_preprocessing_it_was_trained_with() -> None:
    metadata = json.loads((MODEL_REPOSITORY / "cpe_cnn" / "1" / "metadata.json").read_text())
    assert metadata["preprocessing"]["version"] == PREPROCESSING_VERSION
    assert len(metadata["preprocessing"]["sha256"]) == 64
    assert metadata["input"] == {**metadata["input"], "height": 1024, "width": 1360, "channels": 1}
