"""The committed models, their metadata "evaluation" blocks and model cards must agree.

Re-runs each exported serving signature (versions 1 and 2) on a stratified sample of the
held-out test seeds (the same images the card's figures come from) and checks the predictions
and accuracy against what metadata.json / the card claim. Fails if a model, a card or the
generator drift. Version 2 also: the QC/OOD gate's outputs, metadata `qc` block and its
figures on the package-shipped non-phase-contrast images.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from training import synthetic

REPO = Path(__file__).resolve().parent.parent
ROOT = REPO / "model_repository" / "cpe_cnn"
#: version -> (card, generator version that made its data, families of its test plan)
VERSIONS = {
    1: (ROOT / "1" / "MODEL_CARD.md", "1.0", None),
    2: (ROOT / "MODEL_CARD.md", synthetic.GENERATOR_VERSION, synthetic.FAMILIES),
}
PER_STRATUM = {"influenza": 4, "other": 4}  # per influenza severity / per other kind -> 44 (v1)


@pytest.fixture(scope="module", params=sorted(VERSIONS))
def version(request):
    return request.param


@pytest.fixture(scope="module")
def model_dir(version):
    return ROOT / str(version)


@pytest.fixture(scope="module")
def metadata(model_dir):
    return json.loads((model_dir / "metadata.json").read_text())


def _plan(version, n):
    families = VERSIONS[version][2]
    return synthetic.make_plan("test", n) if families is None else synthetic.make_plan(
        "test", n, families=families)


@pytest.fixture(scope="module")
def evaluation(metadata):
    assert "evaluation" in metadata, "metadata.json has no evaluation block"
    return metadata["evaluation"]


@pytest.fixture(scope="module")
def recorded(model_dir):
    """Per-image predictions written by `make train` for the test set."""
    rows = synthetic.read_manifest(model_dir / "assets.extra" / "test_manifest.csv")
    return {int(r["seed"]): r for r in rows}


@pytest.fixture(scope="module")
def sample(version, evaluation):
    """Stratified rows of the evaluated test plan: every kind and every severity."""
    rows = _plan(version, evaluation["n_images"])
    strata = defaultdict(list)
    for row in rows:
        strata[(row["kind"], row["severity"])].append(row)
    chosen = []
    for (kind, _), members in sorted(strata.items()):
        take = PER_STRATUM["influenza" if kind == synthetic.INFLUENZA else "other"]
        chosen += members[:take]
    return chosen


@pytest.fixture(scope="module")
def predictions(model_dir, sample):
    tf = pytest.importorskip("tensorflow")
    from service.preprocessing import prepare

    serve = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    images = []
    for row in sample:
        pixels, _ = synthetic.generate(row["seed"], row["kind"], row["severity"], row["hpi"],
                                       row["family"])
        images.append(prepare(pixels, synthetic.HEIGHT, synthetic.WIDTH, 1))
    images = np.stack(images)
    out = []
    for start in range(0, len(images), 8):
        batch = tf.constant(images[start : start + 8], tf.float32)
        probabilities = serve(image=batch)["probabilities"].numpy()
        assert probabilities.shape[1] == 2
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
        out.append(probabilities[:, 1])
    return np.concatenate(out)


def test_metadata_describes_the_data_and_the_signature(version, metadata, evaluation):
    assert metadata["classes"] == ["uninfected", "infected"]
    assert metadata["input"]["height"] == 1024 and metadata["input"]["width"] == 1360
    assert metadata["output"] == {"tensor": "probabilities"}  # what the service reads today
    training = metadata["training"]
    assert training["generator_version"] == VERSIONS[version][1]
    assert evaluation["generator_version"] == VERSIONS[version][1]
    test_seeds = training["seed_ranges"]["test"]
    assert synthetic.split_of_seed(test_seeds[0]) == synthetic.split_of_seed(test_seeds[1]) == "test"
    for split in ("train", "validation"):
        lo, hi = training["seed_ranges"][split]
        assert hi < test_seeds[0] or lo > test_seeds[1]
    assert sum(training["counts"]["test"].values()) == evaluation["n_images"]


def test_card_quotes_the_metadata(version, evaluation):
    card = VERSIONS[version][0].read_text()
    assert f"version {version}" in card.splitlines()[0]
    assert "says nothing about" in card  # the honesty statement
    assert "99.75%" in card and "e1007883" in card  # the paper's figures, for reference
    assert f"| Overall accuracy | {100 * evaluation['accuracy']:.2f}% |" in card
    assert f"{evaluation['ece_10_bins']:.4f}" in card
    for s in range(1, 5):
        block = evaluation["per_severity"][str(s)]
        assert f"| influenza severity {s} | {block['n']} | {block['correct']} |" in card


def test_recorded_predictions_match_the_evaluation(evaluation, recorded):
    """The manifest written at training time reproduces the card's headline numbers."""
    assert len(recorded) == evaluation["n_images"]
    wrong = sum(r["predicted"] != r["label"] for r in recorded.values())
    assert wrong == evaluation["errors"]


def test_exported_model_reproduces_recorded_predictions(sample, predictions, recorded):
    expected = np.array([float(recorded[row["seed"]]["p_infected"]) for row in sample])
    # Same pixels, same graph: only float round-off (batching, oneDNN) may differ.
    np.testing.assert_allclose(predictions, expected, atol=0.02)


def test_sample_accuracy_is_consistent_with_the_card(sample, predictions, evaluation):
    truth = np.array([row["label"] == "infected" for row in sample])
    errors = int(((predictions >= 0.5) != truth).sum())
    n = len(sample)
    # A stratified sample over-represents hard strata, so allow the card's worst stratum error
    # rate plus a 99% binomial margin -- but no more.
    worst = max(
        1 - block["accuracy"]
        for block in (*evaluation["per_severity"].values(), *evaluation["per_kind"].values())
        if block["n"]
    )
    allowed = math.floor(n * worst + 2.576 * math.sqrt(n * max(worst, 0.01) * (1 - worst)))
    assert errors <= allowed, f"{errors} errors in {n} > {allowed} allowed by the card"


def test_non_influenza_cpe_specificity_matches_the_card(sample, predictions, evaluation):
    non_flu = np.array([row["kind"] in synthetic.NON_INFLUENZA_KINDS for row in sample])
    assert non_flu.sum() >= 8
    if evaluation["specificity_non_influenza_cpe"]["accuracy"] == 1.0:
        assert (predictions[non_flu] < 0.5).all(), "non-influenza CPE called infected"


def test_model_beats_chance_by_far(evaluation):
    """A trained model, not a constant: the card's figures themselves must be meaningful."""
    assert evaluation["accuracy"] >= 0.9
    assert evaluation["sensitivity"] >= 0.8 and evaluation["specificity"] >= 0.8


# --------------------------------------------------------------------------------------------
# Version 2: per-family figures and the QC/OOD gate

V2 = ROOT / "2"


@pytest.fixture(scope="module")
def metadata_v2():
    return json.loads((V2 / "metadata.json").read_text())


def test_v2_card_quotes_families_gate_and_missing_runs(metadata_v2):
    card = (ROOT / "MODEL_CARD.md").read_text()
    ev = metadata_v2["evaluation"]
    assert set(ev["per_family"]) == set(synthetic.FAMILIES)
    for family, block in ev["per_family"].items():
        assert f"| `{family}` | {block['n_images']} | {100 * block['accuracy']:.2f}% |" in card
    assert "Leave-one-family-out" in card and "Spread over training seeds" in card
    npc = metadata_v2["qc"]["non_phase_contrast"]
    assert f"{npc['flagged']} of {npc['n']} flagged" in card
    assert "1/MODEL_CARD.md" in card  # version 1's card stays reachable


def test_v2_metadata_qc_block_is_generic(metadata_v2):
    from training.qc import QC_OUTPUTS

    qc = metadata_v2["qc"]
    assert qc["bit_depths"] == [8, 12, 16]
    reasons = {c["reason"] for c in qc["checks"]}
    assert {"out_of_distribution", "out_of_focus", "saturated", "empty_field"} <= reasons
    for check in qc["checks"]:
        assert check["output"] in QC_OUTPUTS
        if "warn_above" in check:
            assert check["reject_above"] > check["warn_above"]
        else:
            assert check["reject_below"] < check["warn_below"]
    assert 0 <= qc["calibration"]["in_distribution_flag_rate"] <= 1 and qc["calibration"]["n"] > 0
    assert 0.0 < metadata_v2["decision_threshold"] < 1.0
    assert metadata_v2["outputs"] == ["probabilities", *QC_OUTPUTS]


def test_v2_gate_reproduces_its_package_image_figures(metadata_v2):
    """The exported gate flags the package-shipped non-phase-contrast images as recorded."""
    tf = pytest.importorskip("tensorflow")
    from training.package_images import load_package_images
    from training.qc import QC_OUTPUTS, apply_checks

    names, images = load_package_images(1024, 1360)
    recorded = json.loads((V2 / "assets.extra" / "package_images.json").read_text())
    assert names == [i["name"] for i in recorded["images"]]
    serve = tf.saved_model.load(str(V2)).signatures["serving_default"]
    outputs = {}
    for start in range(0, len(images), 8):
        result = serve(image=tf.constant(images[start : start + 8]))
        for key in ("probabilities", *QC_OUTPUTS):
            assert result[key].shape[0] == len(images[start : start + 8])
            outputs.setdefault(key, []).append(result[key].numpy())
    outputs = {k: np.concatenate(v) for k, v in outputs.items()}
    decided = apply_checks(metadata_v2["qc"]["checks"], outputs)
    flagged = sum(s != "ok" for s in decided["status"])
    # Same pixels, same graph; allow one image sitting on a threshold (float round-off).
    assert abs(flagged - metadata_v2["qc"]["non_phase_contrast"]["flagged"]) <= 1


def test_v2_ships_a_compact_warmup_request():
    """TF Serving's warm-up file: a full-size request in bytes (one float_val fills the shape)."""
    tf = pytest.importorskip("tensorflow")
    from tensorflow_serving.apis import prediction_log_pb2

    path = V2 / "assets.extra" / "tf_serving_warmup_requests"
    assert path.stat().st_size < 10_000
    (record,) = list(tf.data.TFRecordDataset(str(path)))
    log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
    assert tf.make_ndarray(log.predict_log.request.inputs["image"]).shape == (1, 1024, 1360, 1)
    size = sum(p.stat().st_size for p in V2.rglob("*") if p.is_file())
    assert size <= 5 * 1024 * 1024
