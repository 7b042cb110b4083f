"""Well names: every accepted form -> one canonical form; bad names raise ValueError."""

from __future__ import annotations

from pathlib import Path

import pytest
from cpe_client.wells import normalize_well, plate_format_for, row_letters, well_position


@pytest.mark.parametrize(("text", "expected"), [
    ("b7", "B07"), ("B7", "B07"), ("B07", "B07"), ("b007", "B07"), ("r02c07", "B07"), ("R2C7", "B07"),
    (" A1 ", "A01"), ("H12", "H12"),                      # 96
    ("p24", "P24"), ("r16c24", "P24"),                    # 384
    ("Z1", "Z01"), ("aa01", "AA01"), ("AF48", "AF48"), ("r27c01", "AA01"), ("r32c48", "AF48"),  # 1536
])
def test_every_form_normalises(text: str, expected: str) -> None:
    assert normalize_well(text) == expected


@pytest.mark.parametrize("text", ["", "A", "7", "A0", "A49", "AG1", "BA1", "AAA1", "r00c01", "r33c01",
                                  "r01c49", "r1c", "B-7", "B7x", "é1", "A1000"])
def test_bad_names_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        normalize_well(text)


def test_non_text_raises_value_error() -> None:
    with pytest.raises(ValueError):
        normalize_well(7)  # type: ignore[arg-type]


def test_plate_format_check() -> None:
    assert normalize_well("h12", plate_wells=96) == "H12"
    for text, wells in (("I1", 96), ("A13", 96), ("Q1", 384), ("A25", 384)):
        with pytest.raises(ValueError):
            normalize_well(text, plate_wells=wells)
    with pytest.raises(ValueError):
        normalize_well("A1", plate_wells=100)


def test_rows_and_formats() -> None:
    assert [row_letters(r) for r in (1, 26, 27, 32)] == ["A", "Z", "AA", "AF"]
    assert well_position("AF48") == (32, 48)
    assert plate_format_for(["A01", "H12"]) == 96
    assert plate_format_for(["A01", "P24"]) == 384
    assert plate_format_for(["Q01"]) == 1536


def test_wells_module_is_pure_stdlib() -> None:
    """The service will import normalize_well: the module may import nothing outside the stdlib."""
    import ast
    import sys

    from cpe_client import wells

    tree = ast.parse(Path(wells.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}
