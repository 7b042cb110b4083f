"""Lab client of the CPE serving API: no TensorFlow, just HTTP, CSVs and plots.

Names are imported on first use, so `cpe_client.wells` (stdlib only) can be imported where
the client's dependencies are not installed: the service shares it for well names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cpe_client.client import ApiError, Client, Prediction
    from cpe_client.wells import normalize_well

__all__ = ["ApiError", "Client", "Prediction", "normalize_well"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("ApiError", "Client", "Prediction"):
        from cpe_client import client

        return getattr(client, name)
    if name == "normalize_well":
        from cpe_client.wells import normalize_well

        return normalize_well
    raise AttributeError(f"module 'cpe_client' has no attribute {name!r}")
