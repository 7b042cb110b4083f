"""What travels through the batcher: one request's job, its reservation, one batch's report."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Self

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from service.batching.batcher import MicroBatcher

#: What a model call returns: one array, or named arrays (a signature's outputs), row-aligned.
Outputs = NDArray[np.float32] | dict[str, NDArray[np.float32]]


def output_rows(outputs: Outputs) -> int:
    """Rows of a model call's outputs; every named output must have as many."""
    if isinstance(outputs, dict):
        counts = {len(array) for array in outputs.values()}
        if len(counts) != 1:
            raise ValueError(f"named outputs disagree on their row count: {sorted(counts)}")
        return counts.pop()
    return len(outputs)


def output_slice(outputs: Outputs, start: int, stop: int) -> Outputs:
    """Rows start:stop of every output."""
    if isinstance(outputs, dict):
        return {name: array[start:stop] for name, array in outputs.items()}
    return outputs[start:stop]


def place_rows(target: Outputs | None, part: Outputs, start: int, stop: int, rows: int) -> Outputs:
    """Write `part` into rows start:stop of a request's outputs (made on first use, `rows` long)."""
    if isinstance(part, dict):
        assembled = target if isinstance(target, dict) else {}
        for name, array in part.items():
            if name not in assembled:
                assembled[name] = np.empty((rows, *array.shape[1:]), dtype=array.dtype)
            assembled[name][start:stop] = array
        return assembled
    if target is None or isinstance(target, dict):
        target = np.empty((rows, *part.shape[1:]), dtype=part.dtype)
    target[start:stop] = part
    return target


@dataclass(frozen=True)
class BatchReport:
    """What happened in one model call; fed to metrics and the debug log."""

    batch_id: int
    size: int
    padded_size: int
    requests: int
    queue_wait_s: tuple[float, ...]
    run_s: float
    failed: bool


@dataclass(eq=False)
class BatchJob:
    """One request's images on their way through the batcher."""

    rows: NDArray[np.float32]
    enqueued_at: float
    future: Future[Outputs] = field(default_factory=Future)
    next_row: int = 0  # first row not yet taken into a batch
    done_rows: int = 0
    output: Outputs | None = None
    abandoned: bool = False
    background: bool = False
    """A whole-plate job's images: taken only into a batch's spare room."""
    batch_ids: list[int] = field(default_factory=list)
    first_batch_at: float | None = None
    """When the first batch holding its images started (queue wait ends)."""
    model_s: float = 0.0
    """Time of the model calls that held its images."""
    trace_context: object | None = None
    """The submitting request's trace context (service.tracing), None when tracing is off."""

    @property
    def pending_rows(self) -> int:
        return len(self.rows) - self.next_row

    def start(self) -> bool:
        """Mark the job running; False if its caller already gave up (stdlib cancel protocol)."""
        if self.abandoned or self.future.cancelled():
            return False
        if self.future.running():
            return True
        return self.future.set_running_or_notify_cancel()

    def deliver(self, start: int, stop: int, part: Outputs, batch_id: int) -> None:
        """Rows start:stop are answered; the future resolves once every row is."""
        if self.future.done():
            return
        self.output = place_rows(self.output, part, start, stop, len(self.rows))
        self.done_rows += stop - start
        self.batch_ids.append(batch_id)
        if self.done_rows == len(self.rows):
            self.future.set_result(self.output)


class Reservation:
    """Room claimed in a batcher for one request's images; see `MicroBatcher.reserve`."""

    def __init__(self, batcher: MicroBatcher, images: int, background: bool = False) -> None:
        self.batcher = batcher
        self.images = images
        self.background = background
        self._settled = False

    def submit(self, rows: NDArray[np.float32]) -> BatchJob:
        """Queue the prepared rows; the reservation is settled whether or not this succeeds."""
        self._settled = True
        return self.batcher.submit(rows, announced=self.images, background=self.background)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if not self._settled:
            self._settled = True
            self.batcher.withdraw(self.images)


def assemble_inputs(parts: list[tuple[BatchJob, int, int]], padded: int) -> NDArray[np.float32]:
    """One model call's input: the parts' rows in order (no copy when one request fills the
    batch), padded to `padded` rows by repeating the last real row (harmless for any model)."""
    if len(parts) == 1:
        job, start, stop = parts[0]
        inputs = job.rows[start:stop]
    else:
        inputs = np.concatenate([job.rows[start:stop] for job, start, stop in parts])
    if padded > len(inputs):
        inputs = np.concatenate([inputs, np.repeat(inputs[-1:], padded - len(inputs), axis=0)])
    return inputs
