"""The in-graph QC/OOD gate (training/qc.py) against numpy references and simple fields."""

from __future__ import annotations

import numpy as np
import pytest

from training import qc, synthetic


def test_mahalanobis_graph_matches_numpy():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 6)).astype(np.float32)
    labels = (rng.random(200) < 0.5).astype(int)
    features[labels == 1] += 3.0
    gate = qc.fit_mahalanobis(features, labels)
    probe = np.concatenate([features[:5], features[:5] + 40.0]).astype(np.float32)
    expected = qc.mahalanobis_numpy(probe, gate)
    got = qc.ood_score(tf.constant(probe), tf.constant(gate["means"]), tf.constant(gate["precision"])).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
    assert expected[5:].min() > 5 * expected[:5].max()  # far from both classes -> large


def test_quality_measures_separate_empty_blurred_and_monolayer_fields():
    tf = pytest.importorskip("tensorflow")
    from training.normalization import normalize_intensity

    rng = np.random.default_rng(1)
    field, _ = synthetic.generate(2_000_000, synthetic.UNINFECTED, 0, 28)
    field = field.astype(np.float32)
    empty = (1000 + rng.normal(0, 10, field.shape)).astype(np.float32)  # substrate + noise
    from scipy import ndimage

    blurred = ndimage.gaussian_filter(field, 6).astype(np.float32)
    saturated = np.minimum(field, np.percentile(field, 70)).astype(np.float32)
    batch = tf.constant(np.stack([field, empty, blurred, saturated])[..., None])
    m = {k: v.numpy() for k, v in qc.quality_measures(batch, normalize_intensity(batch)).items()}
    assert m["texture_score"][1] < 0.2 * m["texture_score"][0]  # empty field: ~no texture
    assert m["focus_score"][2] < 0.2 * m["focus_score"][0]  # defocus: Laplacian variance drops
    assert m["saturated_fraction"][3] > 0.25 and m["saturated_fraction"][0] < 0.01


def test_field_measures_tell_a_monolayer_from_a_half_empty_photo_like_field():
    tf = pytest.importorskip("tensorflow")
    from scipy import ndimage

    from training.normalization import normalize_intensity

    field, _ = synthetic.generate(2_000_003, synthetic.UNINFECTED, 0, 28, "halo")
    field = field.astype(np.float32)
    photo = ndimage.gaussian_filter(field, 4).astype(np.float32)  # smooth: no cell borders
    photo[:, :680] = photo.mean()  # half the field is "sky"
    batch = tf.constant(np.stack([field, photo])[..., None])
    m = {k: v.numpy() for k, v in qc.field_measures(normalize_intensity(batch)).items()}
    assert m["spectral_ratio"][1] < 0.5 * m["spectral_ratio"][0]
    assert m["empty_tile_fraction"][0] < 0.05 and m["empty_tile_fraction"][1] >= 0.4
    assert 0 <= m["bright_fraction"][0] < 0.05


def test_calibrated_checks_flag_outliers_only():
    rng = np.random.default_rng(2)
    values = {k: rng.uniform(1.0, 2.0, 100) for k in qc.QC_OUTPUTS}
    checks = qc.calibrate_checks(values)
    assert [c["reason"] for c in checks] == [c[0] for c in qc.CHECKS]
    for check in checks:
        if "warn_above" in check:
            assert check["reject_above"] > check["warn_above"] >= 2.0
        else:
            assert check["reject_below"] < check["warn_below"] <= 1.0
    outputs = {k: np.array([1.5, 100.0, 1.5]) for k in qc.QC_OUTPUTS}
    outputs["focus_score"] = np.array([1.5, 1.5, 0.1])
    decided = qc.apply_checks(checks, outputs)
    assert decided["status"] == ["ok", "reject", "reject"]
    assert "out_of_distribution" in decided["reasons"][1] and decided["reasons"][2] == ["out_of_focus"]


def test_package_images_are_found():
    from training.package_images import package_image_paths

    names = [name for name, _ in package_image_paths()]
    assert "stardist/data/images/img2d.tif" in names
    assert "mahotas/demos/data/nuclear.png" in names
    assert any(name.startswith("skimage/data/") for name in names)
