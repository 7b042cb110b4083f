"""A stub of POST /predict and GET /status on loopback, for client unit tests that need
exact control of statuses, Retry-After and timing (the real service is in tests/integration)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

#: (status, headers, body) for one request, given the request's image file names.
Answer = tuple[int, dict[str, str], dict[str, Any]]


def ok(names: list[str]) -> Answer:
    """What the service answers: predictions in order, ids = file names."""
    return 200, {}, {"request_id": f"req-{time.monotonic_ns()}", "model": "stub", "model_version": 1,
                     "predictions": [{"id": n, "label": "infected", "probabilities": {"uninfected": 0.1, "infected": 0.9},
                                      "model": "stub", "model_version": 1} for n in names]}


def error(status: int, code: str, retry_after: str | None = None) -> Answer:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return status, headers, {"error": {"code": code, "message": code}}


@dataclass
class StubServer:
    """`respond(names)` decides each answer; `posts` records (monotonic time, file names)."""

    respond: Callable[[list[str]], Answer] = ok
    status_body: dict[str, Any] = field(default_factory=lambda: {"ready": True, "models": {}})
    status_code: int = 200
    posts: list[tuple[float, list[str]]] = field(default_factory=list)

    def __enter__(self) -> Self:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, answer: Answer) -> None:
                status, headers, body = answer
                data = json.dumps(body).encode()
                self.send_response(status)
                for key, value in {**headers, "Content-Type": "application/json"}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send((stub.status_code, {}, stub.status_body))

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                names = [m.decode() for m in re.findall(rb'name="image"; filename="([^"]*)"', body)]
                stub.posts.append((time.monotonic(), names))
                self._send(stub.respond(names))

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
