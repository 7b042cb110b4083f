"""The committed model, its metadata "evaluation" block and MODEL_CARD.md must agree.

Re-runs the exported serving signature on a stratified sample of the held-out test seeds (the
same images the card's figures come from) and checks the predictions and accuracy against
what metadata.json / the card claim. Fails if the model, the card or the generator drift.
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
MODEL_DIR = REPO / "model_repository" / "cpe_cnn" / "1"
CARD = MODEL_DIR.parent / "MODEL_CARD.md"
PER_STRATUM = {"influenza": 4, "other": 4}  # per influenza severity / per other kind -> 44


@pytest.fixture(scope="module")
def metadata():
    return json.loads((MODEL_DIR / "metadata.json").read_text())


@pytest.fixture(scope="module")
def evaluation(metadata):
    assert "evaluation" in metadata, "metadata.json has no evaluation block"
    return metadata["evaluation"]


@pytest.fixture(scope="module")
def recorded():
    """Per-image predictions written by `make train` for the test set."""
    rows = synthetic.read_manifest(MODEL_DIR / "assets.extra" / "test_manifest.csv")
    return {int(r["seed"]): r for r in rows}


@pytest.fixture(scope="module")
def sample(evaluation):
    """Stratified rows of the evaluated test plan: every kind and every severity."""
    rows = synthetic.make_plan("test", evaluation["n_images"])
    strata = defaultdict(list)
    for row in rows:
        strata[(row["kind"], row["severity"])].append(row)
    chosen = []
    for (kind, _), members in sorted(strata.items()):
        take = PER_STRATUM["influenza" if kind == synthetic.INFLUENZA else "other"]
        chosen += members[:take]
    return chosen


@pytest.fixture(scope="module")
def predictions(sample):
    tf = pytest.importorskip("tensorflow")
    from service.preprocessing import prepare

    serve = tf.saved_model.load(str(MODEL_DIR)).signatures["serving_default"]
    images = []
    for row in sample:
        pixels, _ = synthetic.generate(row["seed"], row["kind"], row["severity"], row["hpi"])
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


def test_metadata_describes_the_data_and_the_signature(metadata, evaluation):
    assert metadata["classes"] == ["uninfected", "infected"]
    assert metadata["input"]["height"] == 1024 and metadata["input"]["width"] == 1360
    training = metadata["training"]
    assert training["generator_version"] == synthetic.GENERATOR_VERSION
    assert evaluation["generator_version"] == synthetic.GENERATOR_VERSION
    test_seeds = training["seed_ranges"]["test"]
    assert synthetic.split_of_seed(test_seeds[0]) == synthetic.split_of_seed(test_seeds[1]) == "test"
    for split in ("train", "validation"):
        lo, hi = training["seed_ranges"][split]
        assert hi < test_seeds[0] or lo > test_seeds[1]
    assert sum(training["counts"]["test"].values()) == evaluation["n_images"]


def test_card_quotes_the_metadata(evaluation):
    card = CARD.read_text()
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
