"""A REST service for TensorFlow SavedModel image classifiers; see README.md.

`create_app` is imported on first use, not here: `service.gunicorn_conf` imports
`service.config` before the workers exist, and importing the app (and with it
prometheus_client) that early would fix the metrics' value store before Gunicorn's config has
chosen the multiprocess directory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.app import create_app

__all__ = ["__version__", "create_app"]
__version__ = "0.2.0"


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from service.app import create_app

        return create_app
    raise AttributeError(f"module 'service' has no attribute {name!r}")
