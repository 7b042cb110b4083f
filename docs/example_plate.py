"""Write the README's example plate: a synthetic TCID50 titration in ImageXpress naming.

`python -m docs.example_plate OUT` (from the repository root) writes OUT/plate/TimePoint_1/FLU-T01_<well>_s1_w1.tif
(96 synthetic 1360x1024 phase-contrast fields from training/synthetic.py) and OUT/plate-map.csv:
rows A-H are 8 replicate wells, columns 1-11 tenfold dilutions 10^-1..10^-11, column 12 mock.
How many replicates show CPE at each dilution is chosen, not simulated from a virus.
"""

from __future__ import annotations

import sys
from pathlib import Path

import tifffile

from training.synthetic import generate

# Wells with CPE out of 8, per column 1..11 (column 12: mock-infected controls).
INFECTED_PER_COLUMN = (8, 8, 8, 8, 7, 5, 2, 0, 0, 0, 0)


def main(out: Path) -> None:
    images = out / "plate" / "TimePoint_1"
    images.mkdir(parents=True, exist_ok=True)
    plate_map = ["well,dilution,sample"]
    for column in range(1, 13):
        for index, row in enumerate("ABCDEFGH"):
            seed = 3_000_000 + column * 8 + index  # outside the training/validation/test seed ranges
            if column <= 11 and index < INFECTED_PER_COLUMN[column - 1]:
                pixels, _ = generate(seed, "influenza", severity=4 if column <= 4 else 3, hpi=40)
            else:
                pixels, _ = generate(seed, "uninfected" if index % 2 else "mitotic")
            tifffile.imwrite(images / f"FLU-T01_{row}{column:02d}_s1_w1.tif", pixels)
            if column <= 11:
                plate_map.append(f"{row}{column:02d},1e-{column},virus-A")
    (out / "plate-map.csv").write_text("\n".join(plate_map) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
