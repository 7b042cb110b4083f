"""The batcher's threads, kept alive: a dead one is replaced at once, within a restart budget.

An exception outside the guarded model call, or anything that ends a thread, used to leave a
worker whose requests all timed out while /readyz said 200. Here the dying thread starts its
successor; past MAX_RESTARTS_PER_MINUTE the batcher gives up and reports itself unhealthy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

_log = logging.getLogger(__name__)

MAX_RESTARTS_PER_MINUTE = 5


class ThreadSupervisor:
    """Runs `loop(index)` on `count` daemon threads and replaces those that die."""

    def __init__(self, loop: Callable[[int], None], name: str, count: int,
                 on_restart: Callable[[], None] | None = None) -> None:
        self._loop = loop
        self._name = name
        self._on_restart = on_restart
        self._lock = threading.Lock()
        self._restarts: deque[float] = deque(maxlen=MAX_RESTARTS_PER_MINUTE)
        self.gave_up = False
        self.threads = [self._start(index) for index in range(count)]

    def _start(self, index: int) -> threading.Thread:
        thread = threading.Thread(target=self._loop, args=(index,), name=f"batcher-{self._name}-{index}", daemon=True)
        thread.start()
        return thread

    @property
    def alive(self) -> int:
        """Threads running now."""
        return sum(thread.is_alive() for thread in self.threads)

    def healthy(self) -> bool:
        """Every thread alive, and the restart budget not exhausted."""
        return not self.gave_up and all(thread.is_alive() for thread in self.threads)

    def replace(self, index: int) -> bool:
        """Called by dying thread `index`: start its successor; False when the budget is spent
        (the caller then fails what is queued)."""
        with self._lock:
            now = time.monotonic()
            if len(self._restarts) == self._restarts.maxlen and now - self._restarts[0] < 60:
                self.gave_up = True
                _log.error("batcher %s: threads keep dying; giving up", self._name)
                return False
            self._restarts.append(now)
            self.threads[index] = self._start(index)
        _log.error("batcher thread %s died; restarted it", self.threads[index].name)
        if self._on_restart is not None:
            self._on_restart()
        return True

    def join(self, deadline: float | None) -> None:
        for thread in self.threads:
            thread.join(None if deadline is None else max(deadline - time.monotonic(), 0))
