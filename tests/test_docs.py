"""The README stays true: its two commands exist and every setting is documented."""

from __future__ import annotations

import re

from service.config import ServerSettings, Settings
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def test_first_lines_give_the_run_and_test_commands() -> None:
    head = "\n".join(README.splitlines()[:6])
    assert "make run" in head and "make test" in head
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()


def test_every_setting_is_in_the_readme() -> None:
    names = [f"SERVING_{name.upper()}" for name in Settings.model_fields]
    names += [f"SERVING_{name.upper()}" for name in ServerSettings.model_fields if name != "port"] + ["PORT"]
    missing = [name for name in names if name not in README]
    assert missing == []
