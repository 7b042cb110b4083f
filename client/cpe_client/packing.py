"""Images into requests: in order, capped by images per request and by body bytes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_IMAGES = 64
#: Fraction of the server's body limit a request may fill: room for multipart headers and metadata.
BODY_FILL = 0.8
#: Multipart boundary, part headers and the image's metadata JSON, per image (generous).
PART_OVERHEAD_BYTES = 1024


@dataclass(frozen=True)
class Limits:
    """What one request may carry (from GET /status `limits`, or the service's defaults)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_images_per_request: int = DEFAULT_MAX_IMAGES

    @property
    def body_budget_bytes(self) -> int:
        return int(self.max_body_bytes * BODY_FILL)


def pack(items: Sequence[T], sizes: Sequence[int], max_images: int, max_bytes: int) -> list[list[T]]:
    """Consecutive groups of at most `max_images` items whose sizes plus per-part overhead stay
    under `max_bytes`. An item too big on its own goes alone (the server then says 413 for it)."""
    if max_images < 1:
        raise ValueError("max_images must be at least 1")
    batches: list[list[T]] = []
    current: list[T] = []
    current_bytes = 0
    for item, size in zip(items, sizes, strict=True):
        cost = size + PART_OVERHEAD_BYTES
        if current and (len(current) >= max_images or current_bytes + cost > max_bytes):
            batches.append(current)
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += cost
    if current:
        batches.append(current)
    return batches
