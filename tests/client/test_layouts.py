"""File names -> plate/well/site/channel/time point, for each instrument layout and the escape hatches."""

from __future__ import annotations

from pathlib import Path

import pytest
from cpe_client.layouts import from_file_map, from_layout, from_pattern, parse_name, pick_channel

from tests.client.plates import tiny_tiff, wells_of, write_plate


def _touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def test_imagexpress_names_and_timepoint_folders(tmp_path: Path) -> None:
    _touch(tmp_path, "TimePoint_3/Plate_7_b7_s2_w1.tif", "TimePoint_3/Plate_7_b7_s2_w1_thumb.tif",
           "Plate_7_C12_w2A1B2C3D4-0000-1111-2222-333344445555.TIF", "Plate_7_D03.tif", "notes.txt")
    records = {r.path.name: r for r in from_layout(tmp_path, "imagexpress")}
    assert set(records) == {"Plate_7_b7_s2_w1.tif", "Plate_7_C12_w2A1B2C3D4-0000-1111-2222-333344445555.TIF",
                            "Plate_7_D03.tif"}
    first = records["Plate_7_b7_s2_w1.tif"]
    assert (first.plate, first.well, first.site, first.channel, first.time_point) == ("Plate_7", "B07", 2, "1", 3)
    guid = records["Plate_7_C12_w2A1B2C3D4-0000-1111-2222-333344445555.TIF"]
    assert (guid.well, guid.site, guid.channel, guid.time_point) == ("C12", None, "2", None)


def test_operetta_names(tmp_path: Path) -> None:
    root = tmp_path / "Plate42"
    _touch(root, "r02c07f03p01-ch1sk4fk1fl1.tiff", "r16c24f01p01-ch2sk1fk1fl1.tiff")
    record = parse_name("operetta", root / "r02c07f03p01-ch1sk4fk1fl1.tiff", root)
    assert record is not None
    assert (record.plate, record.well, record.site, record.channel, record.time_point) == ("Plate42", "B07", 3, "1", 4)
    assert parse_name("operetta", root / "r16c24f01p01-ch2sk1fk1fl1.tiff", root, plate="X").plate == "X"  # type: ignore[union-attr]


def test_incucyte_names_number_scans_in_time_order(tmp_path: Path) -> None:
    _touch(tmp_path, "VID1566_B7_1_2026y11m30d_20h00m.tif", "VID1566_B7_1_2026y11m30d_08h00m.tif",
           "VID1566_C10_2_2026y12m01d_08h00m.tif")
    records = {r.path.name: r for r in from_layout(tmp_path, "incucyte")}
    assert records["VID1566_B7_1_2026y11m30d_08h00m.tif"].time_point == 1
    assert records["VID1566_B7_1_2026y11m30d_20h00m.tif"].time_point == 2
    late = records["VID1566_C10_2_2026y12m01d_08h00m.tif"]
    assert (late.plate, late.well, late.site, late.time_point) == ("VID1566", "C10", 2, 3)


@pytest.mark.parametrize("layout", ["imagexpress", "operetta", "incucyte"])
def test_auto_finds_each_layout(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "P001"
    write_plate(root, layout, wells_of("AB", range(1, 4)), sites=2, time_points=2)
    records = from_layout(root)
    assert len(records) == 2 * 3 * 2 * 2
    assert {r.well for r in records} == {"A01", "A02", "A03", "B01", "B02", "B03"}
    assert {r.site for r in records} == {1, 2} and {r.time_point for r in records} == {1, 2}
    assert {r.plate for r in records} == {"P001"}


def test_no_layout_fits(tmp_path: Path) -> None:
    _touch(tmp_path, "image-001.tif")
    with pytest.raises(ValueError, match="--pattern"):
        from_layout(tmp_path)


def test_pattern_with_named_groups_sees_folders(tmp_path: Path) -> None:
    _touch(tmp_path, "day2/plateA/well-c03/field_4.png")
    [record] = from_pattern(tmp_path, r"day(?P<time_point>\d+)/(?P<plate>[^/]+)/well-(?P<well>\w+)/field_(?P<site>\d+)")
    assert (record.plate, record.well, record.site, record.time_point) == ("plateA", "C03", 4, 2)
    with pytest.raises(ValueError, match="unknown groups"):
        from_pattern(tmp_path, r"(?P<colour>\w+)")


def test_file_map(tmp_path: Path) -> None:
    tiny_tiff(tmp_path / "a.tif", seed=1)
    (tmp_path / "map.csv").write_text("file,plate,well,site,time_point\na.tif,PX,r03c02,5,\n")
    [record] = from_file_map(tmp_path, tmp_path / "map.csv")
    assert (record.plate, record.well, record.site, record.time_point) == ("PX", "C02", 5, None)


def test_channel_pick(tmp_path: Path) -> None:
    root = tmp_path / "P001"
    write_plate(root, "imagexpress", ["A01"], sites=1, time_points=1, channels=2)
    records = from_layout(root)
    with pytest.raises(ValueError, match="--channel"):
        pick_channel(records, None)
    assert [r.channel for r in pick_channel(records, "w2")] == ["2"]
    assert [r.channel for r in pick_channel(records, "1")] == ["1"]
    with pytest.raises(ValueError, match="channels found"):
        pick_channel(records, "3")
