"""The batcher's two queues: interactive requests' images, and background jobs' images.

A batch takes interactive images whenever any are queued, and background images (whole-plate
jobs, `service.jobs`) only when none are queued or announced (being decoded), never both: on a
CPU every row of a batch costs compute, so a job's rows in an interactive batch would delay it.
The background queue is small (`max_background_rows`). Not thread-safe: `MicroBatcher` holds
its lock around every call.
"""

from __future__ import annotations

import threading
from collections import deque

from service.batching.jobs import BatchJob
from service.errors import QueueFull

#: Rows start:stop of one job, taken into a batch.
Part = tuple[BatchJob, int, int]


class Lanes:
    """Queued jobs by priority, their row counts, and whether interactive work is in hand."""

    def __init__(self, max_background_rows: int) -> None:
        self.interactive: deque[BatchJob] = deque()
        self.interactive_rows = 0
        self.background: deque[BatchJob] = deque()
        self.background_rows = 0
        self.max_background_rows = max_background_rows
        self.running_interactive = 0
        """Interactive batches taken and not yet finished."""
        self.idle = threading.Event()
        """Set while no interactive image is queued, announced or running."""
        self.idle.set()

    def push(self, job: BatchJob) -> None:
        """Queue a job in its lane (the caller checked the interactive queue's room).

        Raises:
            QueueFull: the background queue cannot take a job's images now.
        """
        if job.background:
            if self.background_rows + len(job.rows) > self.max_background_rows:
                raise QueueFull(f"background queue holds {self.background_rows} of "
                                f"{self.max_background_rows} images", retry_after_s=1)
            self.background.append(job)
            self.background_rows += len(job.rows)
        else:
            self.interactive.append(job)
            self.interactive_rows += len(job.rows)

    def remove(self, job: BatchJob) -> None:
        """Take a job's rows not yet started out of its lane."""
        queue = self.background if job.background else self.interactive
        if job in queue:
            queue.remove(job)
            if job.background:
                self.background_rows -= job.pending_rows
            else:
                self.interactive_rows -= job.pending_rows

    def queued(self) -> list[BatchJob]:
        return [*self.interactive, *self.background]

    def oldest_enqueued_at(self) -> float:
        return min(queue[0].enqueued_at for queue in (self.interactive, self.background) if queue)

    def ready(self, arriving: int, closing: bool) -> bool:
        """Interactive rows queued, or background rows with no interactive image on its way."""
        return bool(self.interactive) or (bool(self.background) and (arriving <= 0 or closing))

    def take(self, room: int, arriving: int, closing: bool, one_job: bool) -> list[Part]:
        """Up to `room` rows of one lane, in order (`one_job`: of a single job only)."""
        taken: list[Part] = []
        queue = self.interactive if self.interactive else self.background
        if queue is self.background and not self.ready(arriving, closing):
            return taken
        while queue and room > 0:
            job = queue[0]
            start = job.next_row
            count = min(room, job.pending_rows)
            job.next_row += count
            room -= count
            taken.append((job, start, start + count))
            if job.background:
                self.background_rows -= count
            else:
                self.interactive_rows -= count
            if job.pending_rows == 0:
                queue.popleft()
            if one_job:
                break
        if taken and queue is self.interactive:
            self.running_interactive += 1  # until `finished`
        return taken

    def finished(self, batch: list[Part], arriving: int) -> None:
        """A batch from `take` has run (or failed)."""
        if batch and not batch[0][0].background:
            self.running_interactive -= 1
        self.note_idle(arriving)

    def note_idle(self, arriving: int) -> None:
        """Update `idle` after any change to the interactive lane or the announcements."""
        if self.interactive or arriving > 0 or self.running_interactive > 0:
            self.idle.clear()
        else:
            self.idle.set()
