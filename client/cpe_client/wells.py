"""Well names: one canonical form (`B07`) for 96-, 384- and 1536-well plates. Pure stdlib.

The service imports `normalize_well` too, so this module must stay dependency-free.
"""

from __future__ import annotations

import re

#: (rows, columns) of the plate formats the lab uses; 1536 rows run A..Z then AA..AF.
PLATE_FORMATS: dict[int, tuple[int, int]] = {6: (2, 3), 12: (3, 4), 24: (4, 6), 48: (6, 8),
                                             96: (8, 12), 384: (16, 24), 1536: (32, 48)}
MAX_ROWS, MAX_COLUMNS = PLATE_FORMATS[1536]

_LETTER_FORM = re.compile(r"([A-Za-z]{1,2})0*(\d{1,3})")
_NUMERIC_FORM = re.compile(r"[Rr]0*(\d{1,3})[Cc]0*(\d{1,3})")


def row_letters(row: int) -> str:
    """1 -> 'A', 26 -> 'Z', 27 -> 'AA' (1536-well plates stop at 32 = 'AF')."""
    if not 1 <= row <= MAX_ROWS:
        raise ValueError(f"row {row} is outside 1..{MAX_ROWS}")
    return chr(64 + row) if row <= 26 else "A" + chr(64 + row - 26)


def row_number(letters: str) -> int:
    """'A' -> 1, 'AF' -> 32; the inverse of `row_letters`."""
    letters = letters.upper()
    if len(letters) == 1 and "A" <= letters <= "Z":
        return ord(letters) - 64
    if len(letters) == 2 and letters[0] == "A" and "A" <= letters[1] <= "F":
        return 26 + ord(letters[1]) - 64
    raise ValueError(f"row {letters!r} is not a plate row (A..Z, AA..AF)")


def well_position(well: str) -> tuple[int, int]:
    """(row, column), both 1-based, of any accepted well form."""
    text = well.strip()
    numeric = _NUMERIC_FORM.fullmatch(text)
    if numeric:
        row, column = int(numeric.group(1)), int(numeric.group(2))
        row_letters(row)  # range check
    else:
        letter = _LETTER_FORM.fullmatch(text)
        if not letter:
            raise ValueError(f"{well!r} is not a well name (expected e.g. B7, B07, b07 or r02c07)")
        row, column = row_number(letter.group(1)), int(letter.group(2))
    if not 1 <= column <= MAX_COLUMNS:
        raise ValueError(f"{well!r}: column {column} is outside 1..{MAX_COLUMNS}")
    return row, column


def normalize_well(text: str, plate_wells: int | None = None) -> str:
    """`b7`, `B7`, `B07`, `r02c07` -> `B07`; `af48` -> `AF48`.

    Args:
        text: a well name in letter-number form (1-2 letters, leading zeros allowed) or the
            Operetta/Opera `rRRcCC` form.
        plate_wells: if given (96, 384, 1536, ...), the well must also lie on that plate.

    Raises:
        ValueError: not a well name, or outside the plate.
    """
    if not isinstance(text, str):
        raise ValueError(f"well must be text, not {type(text).__name__}")  # noqa: TRY004 (one error type for callers)
    row, column = well_position(text)
    if plate_wells is not None:
        if plate_wells not in PLATE_FORMATS:
            raise ValueError(f"unknown plate format {plate_wells}; known: {sorted(PLATE_FORMATS)}")
        rows, columns = PLATE_FORMATS[plate_wells]
        if row > rows or column > columns:
            raise ValueError(f"{text!r} is not on a {plate_wells}-well plate")
    return f"{row_letters(row)}{column:02d}"


def plate_format_for(wells: list[str]) -> int:
    """The smallest standard plate (96, 384 or 1536) that holds every one of these wells."""
    positions = [well_position(well) for well in wells]
    for size in (96, 384, 1536):
        rows, columns = PLATE_FORMATS[size]
        if all(row <= rows and column <= columns for row, column in positions):
            return size
    raise ValueError("wells do not fit a 1536-well plate")  # unreachable: well_position checks
