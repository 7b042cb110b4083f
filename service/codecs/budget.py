"""A per-worker cap on decoded-pixel bytes in flight across request threads (decode_image's gate).

Each decode reserves its header-predicted size before it allocates; when the budget is full a
request waits up to its own timeout and then gets 503 decode_budget_exhausted with Retry-After,
so N concurrent large uploads cannot add up to an out-of-memory kill of the whole worker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from service.errors import DecodeBudgetExhausted, ImageTooLarge


class DecodeBudget:
    """A byte-counting semaphore: `with budget.reserve(n, timeout_s): decode()`."""

    def __init__(self, max_bytes: int, *, default_timeout_s: float = 5.0) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.default_timeout_s = default_timeout_s
        self._in_use = 0
        self._changed = threading.Condition()

    @property
    def in_use_bytes(self) -> int:
        """Bytes reserved right now (for metrics and tests)."""
        with self._changed:
            return self._in_use

    @contextmanager
    def reserve(self, nbytes: int, timeout_s: float | None = None) -> Iterator[None]:
        """Hold `nbytes` of the budget for the body of the `with` block.

        Raises:
            ImageTooLarge: `nbytes` exceeds the whole budget, so waiting could never help (413).
            DecodeBudgetExhausted: the bytes did not free up within `timeout_s` (503).
        """
        nbytes = max(int(nbytes), 0)
        if nbytes > self.max_bytes:
            raise ImageTooLarge(
                f"decoding needs {nbytes} bytes, more than the worker's whole budget of {self.max_bytes}"
            )
        wait_s = self.default_timeout_s if timeout_s is None else max(timeout_s, 0.0)
        deadline = time.monotonic() + wait_s
        with self._changed:
            # NOTE: the remaining time is recomputed after every wake-up, so releases that free
            # too little (or spurious wake-ups) cannot stretch the wait past the deadline.
            while self._in_use + nbytes > self.max_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DecodeBudgetExhausted(f"decode budget of {self.max_bytes} bytes is in use; retry shortly")
                self._changed.wait(remaining)
            self._in_use += nbytes
        try:
            yield
        finally:
            with self._changed:
                self._in_use -= nbytes
                self._changed.notify_all()
