"""A plate run: hash, skip what is answered, pack, send concurrently, append rows, isolate bad files."""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from cpe_client.client import ApiError, Prediction, Upload
from cpe_client.layouts import ImageRecord
from cpe_client.packing import pack
from cpe_client.results import FAILURE_COLUMNS, ResultWriter, answered_hashes, write_csv

if TYPE_CHECKING:
    from cpe_client.client import Client

#: Errors about one image: the whole request failed, so its images are retried one by one.
PER_IMAGE_CODES = frozenset({"undecodable_image", "invalid_base64", "image_too_large", "invalid_image_shape"})
#: Errors about the request's size: split it in two and try the halves.
TOO_BIG_CODES = frozenset({"body_too_large", "too_many_images"})
DEFAULT_CONCURRENCY = 3


@dataclass(frozen=True)
class Pending:
    """An image still to be answered."""

    record: ImageRecord
    sha256: str
    size: int


@dataclass
class RunSummary:
    """What a run did; `failed` maps error code -> images that failed for good with it."""

    total: int = 0
    skipped: int = 0
    answered: int = 0
    requests: int = 0
    retries: int = 0
    failed: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.failed

    def describe(self) -> str:
        text = (f"{self.total} images: {self.skipped} already answered, {self.answered} answered now "
                f"in {self.requests} requests ({self.retries} retries)")
        if self.failed:
            why = ", ".join(f"{code} x{count}" for code, count in self.failed.most_common())
            text += f"; {sum(self.failed.values())} FAILED ({why})"
        return text


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def result_row(item: Pending, prediction: Prediction) -> dict[str, Any]:
    """One row of the per-image CSV."""
    record = item.record
    return {
        "Metadata_Plate": record.plate, "Metadata_Well": record.well, "Metadata_Site": record.site,
        "Metadata_Channel": record.channel, "Metadata_TimePoint": record.time_point,
        "FileName_Phase": record.path.name, "PathName_Phase": str(record.path.parent.resolve()),
        "p_infected": prediction.p_infected, "label": prediction.label, "qc_status": prediction.qc_status,
        "model_name": prediction.model, "model_version": prediction.model_version,
        "preprocessing_hash": prediction.preprocessing_hash, "input_sha256": item.sha256,
        "request_id": prediction.request_id,
    }


Outcome = tuple[Pending, "Prediction | ApiError"]


class _Sender:
    """Sends one packed batch; on a per-image error, isolates the bad file(s)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.requests = 0

    def send(self, batch: list[Pending]) -> list[Outcome]:
        uploads, unreadable = [], []
        for item in batch:
            try:
                uploads.append(Upload(item.record.path.name, item.record.path.read_bytes(), item.record.metadata()))
            except OSError as err:  # moved or unreadable since it was hashed: fails alone
                unreadable.append((item, ApiError(None, "unreadable_file", str(err))))
        if unreadable:
            readable = [item for item in batch if all(item is not bad for bad, _ in unreadable)]
            return unreadable + (self.send(readable) if readable else [])
        self.requests += 1  # a racy count across threads is fine for a summary line
        try:
            return list(zip(batch, self.client.post_images(uploads)))
        except ApiError as err:
            if len(batch) > 1 and err.code in PER_IMAGE_CODES:
                return [outcome for item in batch for outcome in self.send([item])]
            if len(batch) > 1 and err.code in TOO_BIG_CODES:
                half = len(batch) // 2
                return self.send(batch[:half]) + self.send(batch[half:])
            return [(item, err) for item in batch]


def run_plate(
    client: Client, directory: Path, out: Path, *, records: list[ImageRecord] | None = None,
    layout: str = "auto", channel: str | None = None, concurrency: int = DEFAULT_CONCURRENCY,
    max_images: int | None = None, images_per_request: int | None = None, quiet: bool = False,
) -> RunSummary:
    """Answer every image of `directory` (or `records`) into the CSV `out`, resuming.

    Images whose SHA-256 is already in `out` are not sent. Rows are appended as each request
    is answered. Failures for good are written to `<out>.failures.csv` and counted by code.
    `max_images` stops after that many new images (a partial run, resumable later).
    """
    from cpe_client.layouts import from_layout, pick_channel

    if records is None:
        records = pick_channel(from_layout(directory, layout), channel)
    done = answered_hashes(out)
    summary = RunSummary(total=len(records))
    pending: list[Pending] = []
    for record in records:
        digest = file_sha256(record.path)
        if digest in done:
            summary.skipped += 1
        else:
            pending.append(Pending(record, digest, record.path.stat().st_size))
    if max_images is not None:
        pending = pending[:max_images]
    limits = client.limits()
    per_request = min(images_per_request or limits.max_images_per_request, limits.max_images_per_request)
    batches = pack(pending, [p.size for p in pending], per_request, limits.body_budget_bytes)
    sender = _Sender(client)
    failures: list[dict[str, Any]] = []
    writer = ResultWriter(out)
    bar = tqdm(total=len(pending), unit="img", disable=quiet or not sys.stderr.isatty(), file=sys.stderr)
    retries_before = client.retries
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="cpe-send")
    try:
        # At most `concurrency` batches in flight, so Ctrl-C leaves little unanswered work behind.
        queue = list(reversed(batches))
        running: set[Future[list[Outcome]]] = set()
        while queue or running:
            while queue and len(running) < concurrency:
                running.add(pool.submit(sender.send, queue.pop()))
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                outcomes = future.result()
                writer.write(result_row(item, answer) for item, answer in outcomes if isinstance(answer, Prediction))
                for item, answer in outcomes:
                    if isinstance(answer, ApiError):
                        summary.failed[answer.code] += 1
                        failures.append({"FileName_Phase": item.record.path.name,
                                         "PathName_Phase": str(item.record.path.parent.resolve()),
                                         "input_sha256": item.sha256, "status": answer.status,
                                         "code": answer.code, "message": answer.message})
                    else:
                        summary.answered += 1
                bar.update(len(outcomes))
    except BaseException:
        client.close()  # Ctrl-C: in-flight retries stop waiting; their images are sent next run
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
        writer.close()
        summary.requests = sender.requests
        summary.retries = client.retries - retries_before
        failures_path = out.with_name(out.stem + ".failures.csv")
        if failures:
            write_csv(failures_path, FAILURE_COLUMNS, failures)
        elif failures_path.exists():
            failures_path.unlink()
    return summary
