"""training.finetune / training.validate / training.lofo end to end on a handful of images."""

from __future__ import annotations

import csv
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
import tifffile

from training import synthetic

REPO = Path(__file__).resolve().parent.parent
V1 = REPO / "model_repository" / "cpe_cnn" / "1"
#: (family, kind, severity): 3 infected, 3 uninfected, several renderings.
_SET = (
    ("v1", "influenza", 4), ("halo", "influenza", 3), ("detach", "influenza", 4),
    ("v1", "uninfected", 0), ("granular", "syncytia", 0), ("faint", "uninfected", 0),
)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """labels.csv + TIFFs, relative paths, labels spelled both ways."""
    folder = tmp_path_factory.mktemp("lab")
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "plate", "well", "site"])
        for i, (family, kind, severity) in enumerate(_SET):
            pixels, record = synthetic.generate(2_500_000 + i, kind, severity, 40, family)
            tifffile.imwrite(folder / f"f{i}.tif", pixels)
            label = record["label"] if i % 2 else str(synthetic.LABELS.index(record["label"]))
            writer.writerow([f"f{i}.tif", label, "P1", f"A{i + 1:02d}", 1])
    return folder / "labels.csv"


def test_manifest_reading_and_well_split(labelled):
    from training.manifest import read_labelled, split_by_well

    rows = read_labelled(labelled)
    assert [r["label"] for r in rows] == [1, 1, 1, 0, 0, 0]
    assert all(Path(r["path"]).is_file() for r in rows)
    train, val = split_by_well(rows)
    assert sorted(train + val) == list(range(6)) and val


def test_validate_offline(labelled, tmp_path):
    pytest.importorskip("tensorflow")
    from training import validate

    result = validate.main(["--manifest", str(labelled), "--model-dir", str(V1),
                            "--out", str(tmp_path), "--target-sensitivity", "1.0"])
    assert result["n_images"] == 6
    cm = result["confusion_matrix"]["rows_truth_cols_predicted"]
    assert sum(map(sum, cm)) == 6
    low, high = result["accuracy"]["ci95"]
    assert 0 <= low <= result["accuracy"]["value"] <= high <= 1
    assert result["suggested_threshold"]["sensitivity"] == 1.0
    assert (tmp_path / "reliability.png").stat().st_size > 1000
    assert json.loads((tmp_path / "report.json").read_text())["n_images"] == 6


def test_validate_against_a_service(labelled, tmp_path):
    """--url posts multipart `image` to /predict and reads predictions[0].probabilities.infected."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, self.headers["Content-Type"], b'name="image"' in body))
            p = 0.9 if len(seen) <= 3 else 0.2  # the set lists infected images first
            payload = {"predictions": [{"label": "x", "probabilities": {"infected": p, "uninfected": 1 - p}}]}
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        from training import validate

        result = validate.main(["--manifest", str(labelled), "--url",
                                f"http://127.0.0.1:{server.server_port}", "--out", str(tmp_path)])
    finally:
        server.shutdown()
    assert len(seen) == 6 and all(path == "/predict" and "multipart" in ct and field
                                  for path, ct, field in seen)
    assert result["accuracy"]["value"] == 1.0 and result["ece_10_bins"] == pytest.approx(0.15)


def test_wilson_interval_and_threshold_suggestion():
    from training.validate import suggest_threshold, wilson_interval

    low, high = wilson_interval(10, 10)
    assert high == 1.0 and 0.65 < low < 0.75
    p = np.array([0.9, 0.8, 0.3, 0.2, 0.1])
    truth = np.array([1, 1, 1, 0, 0])
    s = suggest_threshold(p, truth, 0.95)
    assert s["threshold"] == 0.3 and s["sensitivity"] == 1.0 and s["specificity"] == 1.0


def test_finetune_exports_a_gated_version(labelled, tmp_path):
    tf = pytest.importorskip("tensorflow")
    from training import finetune
    from training.qc import QC_OUTPUTS

    out = tmp_path / "cpe_cnn" / "3"
    finetune.main(["--manifest", str(labelled), "--base", str(V1), "--out", str(out),
                   "--epochs", "1", "--replay-count", "0", "--calibration-count", "0"])
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["version"] == 3 and metadata["output"] == {"tensor": "probabilities"}
    assert metadata["finetune"]["base"]["version"] == 1 and metadata["finetune"]["n_images"] == 6
    assert {c["output"] for c in metadata["qc"]["checks"]} <= set(QC_OUTPUTS)
    assert 0.0 <= metadata["decision_threshold"] <= 1.0
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    result = serve(image=tf.zeros([1, 1024, 1360, 1]))
    assert set(result) == {"probabilities", *QC_OUTPUTS}
    assert all(result[k].shape == (1,) for k in QC_OUTPUTS)


def test_lofo_plan_holds_each_family_out():
    from training.lofo import lofo_plan

    folds = lofo_plan(synthetic.FAMILIES, 30, 10, 12)
    assert [f["held_out"] for f in folds] == list(synthetic.FAMILIES)
    for fold in folds:
        assert fold["held_out"] not in {r["family"] for r in fold["train"] + fold["validation"]}
        assert {r["family"] for r in fold["test"]} == {fold["held_out"]}
        assert len(fold["test"]) == 12


def test_lofo_runs_merges_and_writes_a_table(tmp_path):
    pytest.importorskip("tensorflow")
    from training import lofo

    tiny = ["--families", "v1,halo", "--train-count", "8", "--val-count", "4", "--test-count", "4",
            "--processes", "1", "--out", str(tmp_path)]
    lofo.main(["--hold-out", "halo", "--epochs", "1", *tiny])
    result = json.loads((tmp_path / "lofo.json").read_text())
    assert [f["held_out"] for f in result["folds"]] == ["halo"]
    assert result["folds"][0]["train_families"] == ["v1"]
    assert result["status"] == "partial: 1 of 2 folds"
    assert "| halo | 4 |" in (tmp_path / "lofo.md").read_text()
    # The other fold, run later with the same settings, joins the table; the first fold stays.
    lofo.main(["--hold-out", "v1", "--merge", "--epochs", "1", *tiny])
    merged = json.loads((tmp_path / "lofo.json").read_text())
    assert [f["held_out"] for f in merged["folds"]] == ["v1", "halo"]
    assert merged["folds"][1] == result["folds"][0] and merged["status"] == "complete: 2 of 2 folds"
    assert all(f["settings"]["epochs"] == 1 and "--hold-out" in f["command"] for f in merged["folds"])
    # Other settings are refused before any training, and the file is left as it was.
    with pytest.raises(SystemExit, match="refusing to merge"):
        lofo.main(["--hold-out", "v1", "--merge", "--epochs", "2", *tiny])
    assert json.loads((tmp_path / "lofo.json").read_text()) == merged
