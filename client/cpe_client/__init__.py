"""Lab client of the CPE serving API: no TensorFlow, just HTTP, CSVs and plots."""

from __future__ import annotations

from cpe_client.client import ApiError, Client, Prediction
from cpe_client.wells import normalize_well

__all__ = ["ApiError", "Client", "Prediction", "normalize_well"]
__version__ = "0.1.0"
