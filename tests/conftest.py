"""Fixtures: settings -> backend -> app -> client (the flaskr pattern), plus image helpers."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
from flask import Flask
from flask.testing import FlaskClient

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from service import create_app  # noqa: E402
from service.config import Settings  # noqa: E402
from tests.fakes import FakeBackend  # noqa: E402
from tests.postgres import PostgresServer, postgres_bin

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = REPO_ROOT / "model_repository"


def tiff_bytes(pixels: np.ndarray, **kwargs: object) -> bytes:
    """Encode pixels as a TIFF in memory."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels, **kwargs)
    return buffer.getvalue()


def serve_committed_model(**settings: object) -> Iterator[Flask]:
    """The committed model repository served in-process (no warm-up, no reloading), for a
    module-scoped fixture to `yield from`."""
    app = create_app(Settings(warmup=False, repository_poll_interval_s=0, **settings))  # type: ignore[arg-type]
    manager = app.extensions["serving"]
    assert manager.wait_ready(120), manager.not_ready_reason()
    yield app
    manager.close()


@pytest.fixture
def settings() -> Settings:
    return Settings(model_name="fake", max_batch_delay_ms=2, request_timeout_s=5, warmup=False)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def app(settings: Settings, backend: FakeBackend) -> Iterator[Flask]:
    app = create_app(settings, backend)
    manager = app.extensions["serving"]
    assert manager.wait_ready(10), manager.not_ready_reason()
    yield app
    manager.close(timeout_s=5)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (tests/postgres.py); .ci/run installs it."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: .ci/run installs Debian's postgresql")
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (apt install postgresql)")
    server = PostgresServer(bin_dir).start()
    yield server
    server.stop()
