"""Re-export a committed version with the `explain` signature, from its own variables.

    python -m training.add_explain model_repository/cpe_cnn/1 model_repository/cpe_cnn/2

The Keras architecture is rebuilt (`training.model.build_model`), its weights are loaded from
the SavedModel's variables by name, and a v2-style QC gate's constants (class means, precision)
are read back from the old `serving_default`'s captured inputs. The new `serving_default` must
answer every output within `TOLERANCE` of the old one on generated images of every kind, or
nothing is replaced. metadata.json, the model card and assets.extra are carried over as they
were (only the SavedModel and its fingerprint change), but for metadata.json's `explain` block
(where the map's cells lie on the input), which a version that already has the signature but
not the block gets alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from service.models.metadata import METADATA_FILE, ExplainSpec, VersionMetadata, read_metadata
from training.gradcam import EXPLAIN_SIGNATURE, cam_geometry
from training.model import INPUT_KEY, SIGNATURE_NAME, export_model, load_keras_model
from training.qc import QC_OUTPUTS
from training.synthetic import generate

TOLERANCE = 1e-6
#: (seed, kind, severity, family): every rendering the versions were trained on, both classes.
CHECK_IMAGES = (
    (11, "influenza", 1, "v1"), (12, "influenza", 3, "halo"), (13, "uninfected", 0, "v1"),
    (14, "syncytia", 0, "granular"), (15, "influenza", 2, "faint"), (16, "debris", 0, "detach"),
)
_CARRIED = ("metadata.json", "MODEL_CARD.md", "assets.extra")


def recover_gate(signature: tf.types.experimental.ConcreteFunction) -> dict[str, np.ndarray] | None:
    """The QC gate's class means (C, D) and precision (D, D) captured by an old signature, or
    None when it has no QC outputs (v1)."""
    if not set(QC_OUTPUTS) <= set(signature.structured_outputs):
        return None
    constants = [value.numpy() for value in signature.captured_inputs if value.dtype == tf.float32]
    square = [c for c in constants if c.ndim == 2 and c.shape[0] == c.shape[1]]
    means = [c for c in constants if c.ndim == 2 and c.shape[0] != c.shape[1]]
    if len(square) != 1 or len(means) != 1:
        raise ValueError(f"cannot tell the gate's constants apart: {[c.shape for c in constants]}")
    return {"means": means[0], "precision": square[0]}


def check_images() -> np.ndarray:
    """The generated images the old and new signatures are compared on, as a float32 batch."""
    return np.stack([generate(seed, kind, severity, family=family)[0].astype(np.float32)[..., None]
                     for seed, kind, severity, family in CHECK_IMAGES])


def max_difference(old_dir: Path, new_dir: Path, images: np.ndarray) -> dict[str, float]:
    """Largest absolute difference per `serving_default` output, one image at a time."""
    old = tf.saved_model.load(str(old_dir)).signatures[SIGNATURE_NAME]
    new = tf.saved_model.load(str(new_dir)).signatures[SIGNATURE_NAME]
    if set(old.structured_outputs) != set(new.structured_outputs):
        raise ValueError(f"outputs differ: {sorted(old.structured_outputs)} vs {sorted(new.structured_outputs)}")
    worst = dict.fromkeys(old.structured_outputs, 0.0)
    for image in images:
        batch = {INPUT_KEY: tf.constant(image[None])}
        before, after = old(**batch), new(**batch)
        for name in worst:
            worst[name] = max(worst[name], float(np.max(np.abs(before[name].numpy() - after[name].numpy()))))
    return worst


def add_explain(version_dir: Path, images: np.ndarray) -> dict[str, float]:
    """Re-export `version_dir` with the explain signature; replace it only if it answers the same."""
    version_dir = Path(version_dir)
    loaded = tf.saved_model.load(str(version_dir))
    if EXPLAIN_SIGNATURE in loaded.signatures:
        if read_metadata(version_dir).explain.cell_stride_px is None:  # exported before the block existed
            _write_geometry(version_dir, cam_geometry(load_keras_model(version_dir)))
            return {}
        raise SystemExit(f"{version_dir} already has an '{EXPLAIN_SIGNATURE}' signature")
    gate = recover_gate(loaded.signatures[SIGNATURE_NAME])
    model = load_keras_model(version_dir)
    with tempfile.TemporaryDirectory(dir=version_dir.parent) as scratch:
        staged = export_model(model, Path(scratch) / version_dir.name, model_name=version_dir.parent.name, gate=gate)
        worst = max_difference(version_dir, staged, images)
        if max(worst.values()) > TOLERANCE:
            raise SystemExit(f"{version_dir}: re-exported serving_default differs: {worst}")
        for name in _CARRIED:
            source, target = version_dir / name, staged / name
            shutil.rmtree(target, ignore_errors=True)
            target.unlink(missing_ok=True)
            if source.is_dir():
                shutil.copytree(source, target)
            elif source.is_file():
                shutil.copy2(source, target)
        _write_geometry(staged, cam_geometry(model))  # the carried metadata.json did not have it
        for name in ("saved_model.pb", "fingerprint.pb", "variables"):
            old, new = version_dir / name, staged / name
            if old.is_dir():
                shutil.rmtree(old)
                shutil.copytree(new, old)
            else:
                shutil.copy2(new, old)
        shutil.copy2(staged / METADATA_FILE, version_dir / METADATA_FILE)
    return worst


def _write_geometry(version_dir: Path, geometry: dict[str, object] | None) -> None:
    """Set metadata.json's `explain` block (where the map lies on the input), all else unchanged
    (its keys keep their order: the diff of a committed version is the block alone)."""
    if geometry is None:
        return
    path = version_dir / METADATA_FILE
    metadata = json.loads(path.read_text())
    metadata["explain"] = ExplainSpec.model_validate(geometry).model_dump(mode="json")
    VersionMetadata.model_validate(metadata)  # what the service will read
    path.write_text(json.dumps(metadata, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("versions", nargs="+", type=Path, help="version directories to re-export in place")
    args = parser.parse_args(argv)
    images = check_images()
    for version_dir in args.versions:
        worst = add_explain(version_dir, images)
        if not worst:
            print(f"{version_dir}: already had the explain signature; metadata.json's explain block written")
            continue
        print(f"{version_dir}: explain signature added; serving_default max |difference| per output: "
              + ", ".join(f"{name} {value:.1e}" for name, value in sorted(worst.items())))


if __name__ == "__main__":
    main()
