"""A batcher that keeps dying takes the worker out of rotation: /readyz turns 503."""

from __future__ import annotations

import numpy as np
import pytest

from service import create_app
from service.config import Settings
from tests.fakes import FAKE_HEIGHT, FAKE_WIDTH, FakeBackend


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_readyz_fails_when_the_batcher_cannot_stay_alive() -> None:
    backend = FakeBackend(fail_with=SystemExit("killed"))
    app = create_app(Settings(model_name="fake", warmup=False, max_batch_delay_ms=1), backend)
    manager = app.extensions["serving"]
    assert manager.wait_ready(5)
    client = app.test_client()
    pixels = np.zeros((FAKE_HEIGHT, FAKE_WIDTH, 1), np.float32).tolist()
    statuses = []
    for _ in range(8):
        statuses.append(client.post("/v1/models/fake:predict", json={"instances": [pixels]}).status_code)
        manager.wait_ready(0.5)  # gives a restarted thread time to start
    assert statuses[0] == 500 and set(statuses) <= {500, 503}
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert client.post("/v1/models/fake:predict", json={"instances": [pixels]}).status_code == 503
    backend.fail_with = None
    manager.close(1)
