"""The client installs from client/ into a fresh venv, without TensorFlow, and its command runs.

Needs PyPI (or a pip cache) for httpx, tqdm and matplotlib, as `make test` does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.client.conftest import CLIENT_SOURCE


def test_fresh_venv_install_has_no_tensorflow(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python, pip = venv / "bin" / "python", [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", str(CLIENT_SOURCE)], check=True, timeout=500)
    probe = ("import importlib.util, cpe_client; from cpe_client.wells import normalize_well; "
             "assert normalize_well('r02c07') == 'B07'; "
             "print([m for m in ('tensorflow', 'keras', 'flask', 'tifffile') if importlib.util.find_spec(m)])")
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"  # no TensorFlow, nor the service's other dependencies
    installed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True).stdout
    assert "cpe-client==0.1.0" in installed and "tensorflow" not in installed.lower()
    help_text = subprocess.run([str(venv / "bin" / "cpe-client"), "--help"], capture_output=True, text=True,
                               check=True, timeout=60).stdout
    assert all(command in help_text for command in ("plate", "summarize", "titre"))
