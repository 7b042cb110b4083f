"""The plate runner against the loopback stub: resume by content hash, torn rows, bad-file isolation."""

from __future__ import annotations

import csv
from pathlib import Path

from cpe_client.client import Client
from cpe_client.layouts import ImageRecord
from cpe_client.results import COLUMNS, answered_hashes, read_rows
from cpe_client.retry import RetryPolicy
from cpe_client.runner import Pending, _Sender, file_sha256, run_plate

from tests.client.plates import wells_of, write_plate
from tests.client.stub import StubServer, error, ok


def _sent(stub: StubServer) -> list[str]:
    return [name for _, names in stub.posts for name in names]


def test_resume_sends_only_what_is_not_in_the_csv(tmp_path: Path) -> None:
    root = tmp_path / "P001"
    paths = write_plate(root, "imagexpress", wells_of("AB", range(1, 6)), sites=2, time_points=1)
    out = tmp_path / "out" / "results.csv"
    with StubServer() as stub:
        first = run_plate(Client(stub.url), root, out, max_images=8, images_per_request=3, quiet=True)
        assert first.answered == 8 and len(stub.posts) == 3  # 3 + 3 + 2
        assert len(read_rows(out)) == 8
        second = run_plate(Client(stub.url), root, out, quiet=True)
    assert (second.skipped, second.answered) == (8, 12)
    assert sorted(_sent(stub)) == sorted(p.name for p in paths)  # each image sent exactly once
    rows = read_rows(out)
    assert list(rows[0]) == list(COLUMNS)
    assert {r["input_sha256"] for r in rows} == {file_sha256(p) for p in paths}
    assert {(r["Metadata_Well"], r["Metadata_Site"]) for r in rows} == {(w, s) for w in wells_of("AB", range(1, 6)) for s in "12"}


def test_a_row_torn_by_a_crash_is_resent_and_the_file_stays_readable(tmp_path: Path) -> None:
    root = tmp_path / "P001"
    write_plate(root, "operetta", ["A01", "A02"], sites=1, time_points=1)
    out = tmp_path / "results.csv"
    with StubServer() as stub:
        run_plate(Client(stub.url), root, out, quiet=True)
        text = out.read_text()
        out.write_text(text[: text.rindex(",")])  # the last row loses its request_id and newline...
        out.write_text(out.read_text()[:-70])      # ...and most of its hash
        assert len(answered_hashes(out)) == 1
        again = run_plate(Client(stub.url), root, out, quiet=True)
    assert again.answered == 1 and len(read_rows(out)) == 2
    with out.open(newline="") as handle:
        lines = list(csv.reader(handle))
    assert len(lines) == 4 and len(lines[-1]) == len(COLUMNS)  # header, row, torn row, the resent row


def test_a_bad_file_is_isolated_and_the_rest_answered(tmp_path: Path) -> None:
    root = tmp_path / "P001"
    paths = write_plate(root, "imagexpress", ["A01", "A02", "A03", "A04"], sites=1, time_points=1)
    bad = paths[2]
    bad.write_bytes(b"not an image")

    def respond(names: list[str]) -> tuple:  # type: ignore[type-arg]
        return error(400, "undecodable_image") if bad.name in names else ok(names)

    out = tmp_path / "results.csv"
    with StubServer(respond=respond) as stub:
        summary = run_plate(Client(stub.url, retry=RetryPolicy(base_s=0.01)), root, out, quiet=True)
    assert summary.answered == 3 and dict(summary.failed) == {"undecodable_image": 1}
    assert "undecodable_image x1" in summary.describe()
    assert stub.posts[0][1] == [p.name for p in paths]  # one packed request first
    assert len(stub.posts) == 5                                              # then one per image
    failures = list(csv.DictReader((tmp_path / "results.failures.csv").open()))
    assert [(f["FileName_Phase"], f["code"], f["status"]) for f in failures] == [(bad.name, "undecodable_image", "400")]
    assert {r["FileName_Phase"] for r in read_rows(out)} == {p.name for p in paths} - {bad.name}


def test_too_big_requests_are_split(tmp_path: Path) -> None:
    root = tmp_path / "P001"
    write_plate(root, "imagexpress", wells_of("A", range(1, 5)), sites=1, time_points=1)
    with StubServer(respond=lambda names: error(413, "body_too_large") if len(names) > 1 else ok(names)) as stub:
        summary = run_plate(Client(stub.url), root, tmp_path / "r.csv", quiet=True)
    assert summary.ok and summary.answered == 4
    assert [len(names) for _, names in stub.posts] == [4, 2, 1, 1, 2, 1, 1]


def test_a_file_gone_since_hashing_fails_alone(tmp_path: Path) -> None:
    [present] = write_plate(tmp_path / "P001", "imagexpress", ["A01"], sites=1, time_points=1)
    gone = Pending(ImageRecord(tmp_path / "gone.tif", well="A02"), "0" * 64, 10)
    with StubServer() as stub:
        outcomes = _Sender(Client(stub.url)).send([gone, Pending(ImageRecord(present, well="A01"), "1" * 64, 10)])
    assert [(item.record.path.name, getattr(answer, "code", "ok")) for item, answer in outcomes] == \
        [("gone.tif", "unreadable_file"), (present.name, "ok")]
    assert stub.posts[0][1] == [present.name]
