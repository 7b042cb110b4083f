"""The Ray Serve peer: the same SavedModel as one replica behind Ray Serve's HTTP proxy.

`@serve.batch` with the service's defaults (max_batch_size 8, 5 ms wait), the request decoded
and prepared in the replica (as a Ray user writes it), one replica allowed every core. Runs from
the bench venv (.venv-bench), never the service's; bench/servers.py starts it. It prints
"RAY SERVE READY" once the deployment answers; SIGTERM shuts Serve and Ray down.

    .venv-bench/bin/python -m bench.ray_app --model-dir model_repository/cpe_cnn/2 --port 8001
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse


@serve.deployment(num_replicas=1)
class Classifier:
    """One replica: decode + prepare per request, the model call per batch."""

    def __init__(self, model_dir: str) -> None:
        from bench.peer_model import PeerModel

        self.model = PeerModel(Path(model_dir))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def infer(self, inputs: list[np.ndarray]) -> list[dict[str, Any]]:
        probabilities = self.model.predict(np.stack(inputs))
        return [self.model.answer(row) for row in probabilities]

    async def __call__(self, request: Request) -> JSONResponse:
        if request.method == "GET":  # /readyz: the replica is up
            return JSONResponse({"status": "ready"})
        return JSONResponse(await self.infer(self.model.prepare(await request.body())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--temp-dir", default=None, help="Ray's session directory (default /tmp/ray)")
    parser.add_argument("--max-ongoing-requests", type=int, default=64,
                        help="per replica; Ray's default (5) would cap a batch of 8 below 8")
    args = parser.parse_args()
    import ray

    cpus = os.cpu_count() or 1
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             object_store_memory=128 * 1024 * 1024, _temp_dir=args.temp_dir)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    app = Classifier.options(max_ongoing_requests=args.max_ongoing_requests,
                             ray_actor_options={"num_cpus": cpus}).bind(str(Path(args.model_dir).resolve()))
    serve.run(app, name="peer", route_prefix="/")

    def stop(signum: int, frame: Any) -> None:
        serve.shutdown()
        ray.shutdown()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    print("RAY SERVE READY", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
