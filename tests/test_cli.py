"""`cpe-serving check`: a model repository validated offline, before a deployment finds out."""

from __future__ import annotations

from pathlib import Path

from service.cli import main
from tests.conftest import MODEL_REPOSITORY
from tests.models import export_tiny_model


def test_the_committed_repository_passes(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["check", str(MODEL_REPOSITORY)]) == 0
    out = capsys.readouterr().out  # the latest version, as the policy serves it
    assert "cpe_cnn/2  signature  ok: image 1024x1360x1" in out and "qc gate    ok: 8 checks" in out


def test_broken_versions_and_configs_fail(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    export_tiny_model(tmp_path, "tiny", 1)
    broken = tmp_path / "tiny" / "2"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"garbage")
    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "tiny" model_version_policy { all {} } } }')
    assert main(["check", str(tmp_path), "--model-config-file", str(config)]) == 1
    out = capsys.readouterr().out
    assert "tiny/1  signature  ok" in out and "tiny/2  load" in out
    config.write_text("not a models.config")
    assert main(["check", str(tmp_path), "--model-config-file", str(config)]) == 1
    assert main(["check", str(tmp_path / "empty")]) == 1
