"""When to try a request again: exponential backoff with jitter that never undercuts Retry-After."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

#: Statuses worth another try: the server shed load, timed out or lost its backend.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff `base_s * 2**attempt` (capped, ± jitter), raised to the server's Retry-After."""

    max_attempts: int = 10
    base_s: float = 0.5
    max_s: float = 30.0
    jitter: float = 0.25  # fraction of the delay, so clients refused together spread out

    def delay_s(self, attempt: int, retry_after_s: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt `attempt + 1` (attempt counts from 0)."""
        backoff = min(self.max_s, self.base_s * 2.0 ** attempt)
        uniform = rng.uniform if rng is not None else random.uniform
        backoff *= 1 + self.jitter * uniform(-1, 1)
        if retry_after_s is not None:
            # The server knows its queue: never come back earlier than it asked.
            return max(backoff, min(retry_after_s, self.max_s))
        return backoff


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
