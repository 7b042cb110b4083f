"""`pip install .` ships what `make run` runs: the same pins and every service package."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[re.sub(r"\[.*\]", "", name).strip().lower().replace("_", "-")] = version.split(";")[0].strip()
    return pins


def test_the_package_declares_the_runtime_requirements() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = _pins(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared.update(_pins(extra))
    required = _pins((REPO_ROOT / "requirements.txt").read_text().splitlines())
    missing = {name: version for name, version in required.items() if declared.get(name) != version}
    assert not missing, f"requirements.txt pins that pyproject.toml does not declare: {missing}"


def test_every_service_package_is_shipped() -> None:
    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {str(init.parent.relative_to(REPO_ROOT)).replace("/", ".")
                for init in (REPO_ROOT / "service").rglob("__init__.py")}
    assert packages <= set(setuptools["packages"]), packages - set(setuptools["packages"])
