"""The reduced runs the model card quotes: leave-one-family-out folds merged run by run, the
recipe's spread over seeds (a tiny real run), the plateau criterion, and the card's sections."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from training import lofo, seeds, synthetic
from training.card import render_model_card_v2

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "training" / "results"
SETTINGS = {"train_count": 600, "val_count": 60, "test_count": 100, "epochs": 3, "batch_size": 8,
            "learning_rate": 0.002, "seed": 20200502}
FAMILIES = ["v1", "halo", "granular", "detach", "faint"]


def _summary(accuracy: float) -> dict[str, Any]:
    return {"n_images": 100, "accuracy": accuracy, "sensitivity": 0.5, "specificity": 0.5,
            "severity_1": None, "non_influenza_cpe_specificity": 0.5, "ece_10_bins": 0.1}


def _fold(held_out: str, accuracy: float, **extra: Any) -> dict[str, Any]:
    return {"held_out": held_out, "train_families": [f for f in FAMILIES if f != held_out],
            "selected_epoch": 3, "summary": _summary(accuracy), **extra}


@pytest.fixture
def legacy() -> dict[str, Any]:
    """A lofo.json as written before folds carried their own settings (the committed one was)."""
    return {"generator_version": "2.0", "settings": dict(SETTINGS), "command": "python -m training.lofo A",
            "note": "kept", "wall_time_s": 100.0,
            "folds": [_fold("halo", 0.69), _fold("granular", 0.5), _fold("detach", 0.67)]}


def _new(*folds: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return {"generator_version": "2.0", "families": FAMILIES, "settings": {**SETTINGS, **settings},
            "wall_time_s": 50.0, "folds": list(folds)}


def test_merge_keeps_folds_not_rerun_in_family_order(legacy):
    new = _new(_fold("faint", 0.8, settings=SETTINGS, command="B"),
               _fold("v1", 0.7, settings=SETTINGS, command="B"),
               _fold("halo", 0.9, settings=SETTINGS, command="B"))
    merged = lofo.merge_results(legacy, new)
    assert [f["held_out"] for f in merged["folds"]] == FAMILIES
    by_family = {f["held_out"]: f for f in merged["folds"]}
    assert by_family["halo"]["summary"]["accuracy"] == 0.9  # the re-run replaces the old fold
    assert by_family["granular"]["summary"]["accuracy"] == 0.5  # the others stay
    # Old folds now say how they were trained, and the file lists both commands.
    assert by_family["granular"]["settings"] == SETTINGS
    assert by_family["granular"]["command"] == "python -m training.lofo A"
    assert merged["commands"] == ["B", "python -m training.lofo A"]
    assert merged["status"] == "complete: 5 of 5 folds" and merged["note"] == "kept"
    assert merged["wall_time_s"] == 150.0 and "command" not in merged


def test_merge_of_a_partial_run_says_so(legacy):
    merged = lofo.merge_results(legacy, _new(_fold("v1", 0.7, settings=SETTINGS, command="B")))
    assert merged["status"] == "partial: 4 of 5 folds"
    assert lofo.merge_results(None, _new())["status"] == "partial: 0 of 5 folds"


@pytest.mark.parametrize("change", [{"epochs": 4}, {"train_count": 1200}, {"seed": 1}])
def test_merge_refuses_folds_trained_differently(legacy, change):
    with pytest.raises(lofo.MixedSettings, match="halo"):
        lofo.merge_results(legacy, _new(**change))


def test_merge_refuses_another_generator_or_family_set(legacy):
    with pytest.raises(lofo.MixedSettings, match="generator"):
        lofo.merge_results(legacy, {**_new(), "generator_version": "3.0"})
    with pytest.raises(lofo.MixedSettings, match="families"):
        lofo.merge_results(legacy, {**_new(), "families": ["v1", "halo"]})


def _history(*epochs: tuple[float, float]) -> list[dict[str, Any]]:
    return [{"epoch": i + 1, "val_accuracy": acc, "val_loss": loss} for i, (acc, loss) in enumerate(epochs)]


def test_plateau_escape_needs_accuracy_and_loss():
    ln2 = math.log(2)
    on_plateau = _history((0.5, ln2), (0.52, ln2 - 0.001), (0.5, ln2 + 0.01))
    assert seeds.plateau_escape(on_plateau, chance=0.5) is None
    # Majority-class guessing on an unbalanced set is not an escape: accuracy is measured from chance.
    assert seeds.plateau_escape(_history((0.7, 0.6)), chance=0.7) is None
    # Accurate but uncalibrated (loss above ln 2 - margin) and calibrated but at chance: neither.
    assert seeds.plateau_escape(_history((0.75, ln2 - 0.01)), chance=0.5) is None
    assert seeds.plateau_escape(_history((0.55, 0.5)), chance=0.5) is None
    assert seeds.plateau_escape(_history((0.5, ln2), (0.61, 0.62), (0.9, 0.3)), chance=0.5) == 2


def test_spread_ignores_missing_values():
    assert seeds.spread([3, 1, 2]) == {"min": 1.0, "median": 2.0, "max": 3.0}
    assert seeds.spread([None, 0.5]) == {"min": 0.5, "median": 0.5, "max": 0.5}
    assert seeds.spread([]) == {"min": None, "median": None, "max": None}


@pytest.fixture(scope="module")
def tiny_seeds(tmp_path_factory) -> tuple[dict[str, Any], Path]:
    """Two seeds of the real recipe on 8 training images (one step each): structure, not skill
    (two, not three, keeps the module near 30 s of CPU)."""
    pytest.importorskip("tensorflow")
    out = tmp_path_factory.mktemp("seeds")
    result = seeds.main(["--seeds", "5,6", "--families", "v1,halo", "--train-count", "8",
                         "--val-count", "8", "--test-count", "8", "--epochs", "1",
                         "--processes", "1", "--out", str(out)])
    return result, out


def test_seed_spread_tiny_run(tiny_seeds):
    result, out = tiny_seeds
    assert json.loads((out / "seeds.json").read_text()) == result
    assert [r["seed"] for r in result["runs"]] == [5, 6]
    assert result["status"] == "complete: 2 of 2 seeds" and result["families"] == ["v1", "halo"]
    assert result["settings"]["train_count"] == 8 and "--seeds 5,6" in result["command"]
    labels = [r["label"] for r in synthetic.make_plan("validation", 8, families=("v1", "halo"))]
    chance = max(labels.count(x) for x in synthetic.LABELS) / len(labels)  # 6 of 8 infected
    for run in result["runs"]:
        assert len(run["history"]) == 1 and run["selected_epoch"] == 1
        assert run["val_chance"] == chance
        assert run["escaped_plateau"] == (seeds.plateau_escape(run["history"], chance) is not None)
        assert run["val_accuracy"] == run["history"][0]["val_accuracy"]
        assert 0 <= run["test_accuracy"] <= 1 and run["test_ece_10_bins"] >= 0
    # Different seeds, same data: the two trainings are not copies of one another.
    assert result["runs"][0]["history"] != result["runs"][1]["history"]
    ece = sorted(r["test_ece_10_bins"] for r in result["runs"])
    assert result["spread"]["test_ece_10_bins"] == pytest.approx(
        {"min": ece[0], "median": (ece[0] + ece[1]) / 2, "max": ece[1]})
    assert result["escaped"] == f"{sum(r['escaped_plateau'] for r in result['runs'])} of 2"
    rows = (out / "seeds.md").read_text().splitlines()
    assert [r.split(" | ")[0] for r in rows[2:]] == ["| 5", "| 6", "| *min*", "| *median*", "| *max*"]


def test_card_renders_both_reduced_run_tables(tiny_seeds, legacy, tmp_path):
    seeds_result, _ = tiny_seeds
    merged = lofo.merge_results(legacy, _new(_fold("v1", 0.71, settings=SETTINGS, command="B")))
    (tmp_path / "lofo.json").write_text(json.dumps(merged))
    (tmp_path / "seeds.json").write_text(json.dumps(seeds_result))
    metadata = json.loads((REPO / "model_repository" / "cpe_cnn" / "2" / "metadata.json").read_text())
    card = render_model_card_v2(metadata, results=tmp_path)
    assert lofo.render_table(merged) in card and seeds.render_table(seeds_result) in card
    assert "| v1 | 100 | 71.0% |" in card and "partial: 4 of 5 folds" in card
    assert card.count("**Reduced runs**") == 2
    assert "600 training and 60 validation images" in card and "8 training, 8 validation" in card
    assert "worst fold 50.00%, 4 of 5 folds" in card  # a partial table never ticks a LOFO target
    # Without results the card says the runs are missing and how to make them.
    bare = render_model_card_v2(metadata, results=tmp_path / "none")
    assert "make train-lofo" in bare and "make train-seeds" in bare and "| v1 | 100 |" not in bare


def test_committed_card_quotes_the_committed_results():
    """MODEL_CARD.md was re-rendered after the last reduced run (`python -m training.card`)."""
    card = (REPO / "model_repository" / "cpe_cnn" / "MODEL_CARD.md").read_text()
    for name, module in (("lofo", lofo), ("seeds", seeds)):
        result = json.loads((RESULTS / f"{name}.json").read_text())
        assert module.render_table(result) in card, f"{name}.json is newer than the card"
        assert result["status"] in card
