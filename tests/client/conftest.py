"""The client's tests import `cpe_client` from this checkout's client/ folder (always current,
even where an older copy is installed in the venv), and share a stub HTTP server."""

from __future__ import annotations

import sys
from pathlib import Path

CLIENT_SOURCE = Path(__file__).resolve().parents[2] / "client"
sys.path.insert(0, str(CLIENT_SOURCE))
