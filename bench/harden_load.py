"""Load driver of `make harden`, run as its own process: every request's fate, not just a summary.

bench/loadgen.py reports percentiles of a measured window; the hardening checks need more: how
many requests were *sent* and how many were *answered* (and with what), which failed at connect
(refused: the server had stopped listening) and which failed after the request went out (lost),
and optionally a signal sent to a pid at a given second of the run, so the kill lands under load.

Output: one JSON object on stdout with `samples`, one `[scheduled_s, done_s, status, fate, connected_s]` per
request (times relative to the start; status 0 when none came back; fate is "" for an answer,
"refused", "lost" (reset / EOF after the request was sent), "timeout" or "unfinished"), plus
`connected_s`: when the TCP connection that carried it was opened.

    python -m bench.harden_load --port 8000 --payload a.tif --mode open --rate 40 --duration-s 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

from bench.loadgen import arrivals, build_requests


class Conn:
    """One keep-alive HTTP/1.1 connection (reopened when the server closed it)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.opened = 0.0  # perf_counter() when the connection in use was opened

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def _send(self, raw: bytes) -> bytes:
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw)
        await self.writer.drain()
        return await self.reader.readuntil(b"\r\n\r\n")

    async def request(self, raw: bytes) -> tuple[int, str]:
        """(status, fate). A reused keep-alive connection the server closed before any response
        byte is reopened and the request sent again once, as every HTTP client does."""
        reused = self.writer is not None
        try:
            if not reused:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                self.opened = time.perf_counter()
        except OSError:
            self.close()
            return 0, "refused"
        try:
            try:
                head = await self._send(raw)
            except (ConnectionError, asyncio.IncompleteReadError) as err:
                partial = isinstance(err, asyncio.IncompleteReadError) and err.partial
                if not reused or partial:
                    raise
                self.close()
                try:
                    self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                    self.opened = time.perf_counter()
                except OSError:
                    self.close()
                    return 0, "refused"
                head = await self._send(raw)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            length, close = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip())
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            assert self.reader is not None
            await self.reader.readexactly(length)
            if close:
                self.close()
            return status, ""
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
            self.close()
            return 0, "lost"


async def drive(args: argparse.Namespace, bodies: list[bytes]) -> dict[str, object]:
    requests = build_requests(args.host, args.port, args.path, args.content_type, bodies)
    t0 = time.perf_counter()
    t_end = t0 + args.duration_s
    samples: list[list[object]] = []
    pending: dict[int, float] = {}
    state: dict[str, object] = {}
    counter = 0

    async def one(conn: Conn, raw: bytes, scheduled: float) -> None:
        nonlocal counter
        key = counter
        counter += 1
        pending[key] = scheduled
        try:
            status, fate = await asyncio.wait_for(conn.request(raw), args.request_timeout_s)
        except TimeoutError:
            conn.close()
            status, fate = 0, "timeout"
        del pending[key]
        samples.append([round(scheduled - t0, 4), round(time.perf_counter() - t0, 4), status, fate,
                        round(conn.opened - t0, 4)])
        if fate == "refused":
            await asyncio.sleep(0.02)  # no busy loop against a closed port

    async def send_signal() -> None:
        await asyncio.sleep(args.signal_at_s)
        state["signal_s"] = round(time.perf_counter() - t0, 4)
        state["in_flight_at_signal"] = len(pending)
        os.kill(args.signal_pid, getattr(signal, args.signal))

    tasks: set[asyncio.Task[None]] = set()
    if args.signal_pid:
        tasks.add(asyncio.ensure_future(send_signal()))
    if args.mode == "closed":
        async def client(index: int) -> None:
            conn, issued = Conn(args.host, args.port), 0
            while time.perf_counter() < t_end:
                await one(conn, requests[(index + issued) % len(requests)], time.perf_counter())
                issued += 1
            conn.close()
        await asyncio.gather(*(client(i) for i in range(args.concurrency)))
    else:
        rng = random.Random(args.seed)
        idle: list[Conn] = []

        async def arrival(raw: bytes, scheduled: float) -> None:
            conn = idle.pop() if idle else Conn(args.host, args.port)
            await one(conn, raw, scheduled)
            idle.append(conn)

        async for index, scheduled in arrivals(rng, args.rate, t0, t_end):
            task = asyncio.ensure_future(arrival(requests[index % len(requests)], scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        live = [t for t in tasks if not t.done()]
        if live:
            await asyncio.wait(live, timeout=args.drain_timeout_s)
        for conn in idle:
            conn.close()
    unfinished = len(pending)
    for scheduled in pending.values():
        samples.append([round(scheduled - t0, 4), None, 0, "unfinished", None])
    for task in tasks:
        task.cancel()
    return {"sent": counter, "samples": samples, "unfinished": unfinished,
            "wall_s": round(time.perf_counter() - t0, 3), **state}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/predict")
    parser.add_argument("--content-type", default="image/tiff")
    parser.add_argument("--payload", type=Path, action="append", required=True)
    parser.add_argument("--mode", choices=["closed", "open"], default="closed")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--request-timeout-s", type=float, default=90.0)
    parser.add_argument("--drain-timeout-s", type=float, default=90.0)
    parser.add_argument("--signal-pid", type=int, default=0)
    parser.add_argument("--signal", default="SIGTERM", choices=["SIGTERM", "SIGKILL"])
    parser.add_argument("--signal-at-s", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("loopback only")
    result = asyncio.run(drive(args, [p.read_bytes() for p in args.payload]))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
