"""A small, efficient HTTP/1.1 load generator (stdlib asyncio only), run as its own process.

Closed loop: `--concurrency N` virtual clients, one keep-alive connection each, every client
sends its next request as soon as it has its answer. Open loop: requests arrive at `--rate`
per second (Poisson or fixed spacing) whatever the server does; each arrival takes an idle
connection or opens a new one, and its latency is counted from its *scheduled* arrival time,
so a server that falls behind cannot hide it (no coordinated omission).

A run is a warm-up phase (discarded) followed by a measured window; it stops by itself. The
result is one JSON object on stdout: throughput, latency percentiles, errors, this process's
CPU share, and (with `--watch-pid`) the CPU the server processes used during the window.

    python -m bench.loadgen --port 8000 --payload a.tif --payload b.tif --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of an already sorted list."""
    if not sorted_values:
        return float("nan")
    position = (len(sorted_values) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _process_tree(root_pids: list[int]) -> list[int]:
    """The given pids and all their descendants (gunicorn master -> workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    stack = list(root_pids)
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                fields = handle.read().decode(errors="replace").rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / _CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds all processes on this machine spent busy (from /proc/stat)."""
    with open("/proc/stat", "rb") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / _CLOCK_TICKS


@dataclass
class Sample:
    scheduled: float
    done: float
    ok: bool
    status: int


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    connects: int = 0
    transport_errors: int = 0
    refused_in_row: int = 0
    stale_retries: int = 0


class Connection:
    """One keep-alive HTTP/1.1 connection; reopens itself after the server closed it."""

    def __init__(self, host: str, port: int, run: Run) -> None:
        self.host = host
        self.port = port
        self.run = run
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.run.connects += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send one complete request; return (status, body). Raises on transport errors.

        A reused keep-alive connection the server already closed (gunicorn drops idle ones after
        its keepalive) fails before any response byte: like every HTTP client, reconnect and
        send again, once.
        """
        reused = self.writer is not None
        if self.writer is None:
            await self._open()
        assert self.reader is not None and self.writer is not None
        try:
            self.writer.write(raw)
            await self.writer.drain()
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (ConnectionError, asyncio.IncompleteReadError) as err:
            if not reused or (isinstance(err, asyncio.IncompleteReadError) and err.partial):
                raise
            self.close()
            self.run.stale_retries += 1
            await self._open()
            assert self.reader is not None and self.writer is not None
            self.writer.write(raw)
            await self.writer.drain()
            head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = None
        chunked = False
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        if chunked:
            body = bytearray()
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                body += await self.reader.readexactly(size + 2)
                if size == 0:
                    break
            payload = bytes(body)
        elif length is not None:
            payload = await self.reader.readexactly(length)
        else:  # no length: the body runs to the end of the connection
            payload = await self.reader.read()
            close = True
        if close:
            self.close()
        return status, payload


def build_requests(host: str, port: int, path: str, content_type: str, payloads: list[bytes]) -> list[bytes]:
    return [
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
        ).encode("latin-1") + body
        for body in payloads
    ]


class ServerDown(Exception):
    """The server refused connections many times in a row: the cell is void."""


async def _one(conn: Connection, raw: bytes, scheduled: float, run: Run) -> None:
    try:
        status, _ = await conn.request(raw)
        run.samples.append(Sample(scheduled, time.perf_counter(), status == 200, status))
        run.refused_in_row = 0
    except ConnectionRefusedError:
        conn.close()
        run.transport_errors += 1
        run.refused_in_row += 1
        run.samples.append(Sample(scheduled, time.perf_counter(), False, 0))
        if run.refused_in_row >= 50:
            raise ServerDown("connection refused 50 times in a row")
        await asyncio.sleep(0.02)  # no busy loop against a dead port
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
        conn.close()
        run.transport_errors += 1
        run.samples.append(Sample(scheduled, time.perf_counter(), False, 0))


async def closed_loop(args: argparse.Namespace, requests: list[bytes], run: Run, t_end: float) -> None:
    counter = 0

    async def client(index: int) -> None:
        nonlocal counter
        conn = Connection(args.host, args.port, run)
        issued = 0
        while time.perf_counter() < t_end and (args.max_requests <= 0 or counter < args.max_requests):
            raw = requests[(index + issued * args.concurrency) % len(requests)]
            issued += 1
            counter += 1
            await _one(conn, raw, time.perf_counter(), run)
        conn.close()

    await asyncio.gather(*(client(i) for i in range(args.concurrency)))


async def arrivals(rng: random.Random, rate: float, start: float, end: float,
                   poisson: bool = True) -> AsyncIterator[tuple[int, float]]:
    """Open-loop arrivals: (index, scheduled time) at `rate` per second between `start` and
    `end` (perf_counter), each yielded once its time has come, whatever the server does."""
    scheduled, index = start, 0
    while True:
        scheduled += rng.expovariate(rate) if poisson else 1.0 / rate
        if scheduled >= end:
            return
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        yield index, scheduled
        index += 1


async def open_loop(args: argparse.Namespace, requests: list[bytes], run: Run, t_start: float,
                    t_measure_end: float) -> None:
    rng = random.Random(args.seed)
    idle: list[Connection] = []
    tasks: set[asyncio.Task[None]] = set()

    async def arrival(raw: bytes, scheduled: float) -> None:
        conn = idle.pop() if idle else Connection(args.host, args.port, run)
        await _one(conn, raw, scheduled, run)
        idle.append(conn)

    async for index, scheduled in arrivals(rng, args.rate, t_start, t_measure_end, args.arrivals == "poisson"):
        task = asyncio.ensure_future(arrival(requests[index % len(requests)], scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    # Every arrival of the window is waited for (bounded): slow answers must not be censored.
    if tasks:
        await asyncio.wait(tasks, timeout=args.drain_timeout_s)
    for conn in idle:
        conn.close()


def summarise(run: Run, window_start: float, window_end: float, mode: str) -> dict[str, object]:
    if mode == "closed":
        measured = [s for s in run.samples if window_start <= s.done <= window_end]
    else:
        measured = [s for s in run.samples if window_start <= s.scheduled < window_end]
    ok = sorted((s.done - s.scheduled) * 1000.0 for s in measured if s.ok)
    statuses: dict[str, int] = {}
    for s in measured:
        if not s.ok:
            statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
    wall = window_end - window_start
    return {
        "requests": len(measured),
        "ok": len(ok),
        "errors": len(measured) - len(ok),
        "error_statuses": statuses,
        "throughput_rps": len(ok) / wall if wall > 0 else 0.0,
        "p50_ms": percentile(ok, 50),
        "p95_ms": percentile(ok, 95),
        "p99_ms": percentile(ok, 99),
        "max_ms": ok[-1] if ok else float("nan"),
        "mean_ms": sum(ok) / len(ok) if ok else float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/predict")
    parser.add_argument("--content-type", default="image/tiff")
    parser.add_argument("--payload", type=Path, action="append", required=True, help="body file; repeat")
    parser.add_argument("--mode", choices=["closed", "open"], default="closed")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--rate", type=float, default=10.0, help="open loop: arrivals per second")
    parser.add_argument("--arrivals", choices=["poisson", "uniform"], default="poisson")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int, default=0, help="closed loop: stop after this many")
    parser.add_argument("--drain-timeout-s", type=float, default=60.0)
    parser.add_argument("--watch-pid", type=int, action="append", default=[],
                        help="server pid whose process tree's CPU use is reported")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("this load generator only talks to loopback")

    payloads = [path.read_bytes() for path in args.payload]
    requests = build_requests(args.host, args.port, args.path, args.content_type, payloads)
    run = Run()
    watched = _process_tree(args.watch_pid) if args.watch_pid else []

    # The CPU and server samples at the window edges are taken from a timer inside the loop.
    marks: dict[str, float] = {}

    def mark(name: str) -> None:
        marks[f"{name}_wall"] = time.perf_counter()
        marks[f"{name}_cpu"] = time.process_time()
        marks[f"{name}_busy"] = machine_busy_seconds()
        if watched:
            marks[f"{name}_server_cpu"] = cpu_seconds(watched)

    async def main_async() -> None:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        window_start = t0 + args.warmup_s
        window_end = window_start + args.duration_s
        loop.call_at(loop.time() + args.warmup_s, mark, "start")
        loop.call_at(loop.time() + args.warmup_s + args.duration_s, mark, "end")
        if args.mode == "closed":
            await closed_loop(args, requests, run, window_end)
        else:
            await open_loop(args, requests, run, t0, window_end)
        marks["window_start"] = window_start
        marks["window_end"] = window_end

    mark("begin")
    server_down = False
    try:
        asyncio.run(main_async())
    except ServerDown:
        server_down = True
        marks.setdefault("window_end", time.perf_counter())
    if "end_wall" not in marks:  # stopped early (max_requests): the window ends now
        mark("end")
    if "start_wall" not in marks:
        marks["start_wall"], marks["start_cpu"] = marks["begin_wall"], marks["begin_cpu"]
        marks["start_busy"] = marks["begin_busy"]
        if watched:
            marks["start_server_cpu"] = marks["begin_server_cpu"]
    window_start = marks["start_wall"]
    window_end = min(marks["window_end"], marks["end_wall"])
    result = summarise(run, window_start, window_end, args.mode)
    wall = max(marks["end_wall"] - marks["start_wall"], 1e-9)
    loadgen_cpu = marks["end_cpu"] - marks["start_cpu"]
    server_cpu = (marks["end_server_cpu"] - marks["start_server_cpu"]) if watched else 0.0
    busy = marks["end_busy"] - marks["start_busy"]
    result.update(
        mode=args.mode,
        concurrency=args.concurrency if args.mode == "closed" else None,
        rate_rps=args.rate if args.mode == "open" else None,
        window_s=window_end - window_start,
        loadgen_cpu_share=loadgen_cpu / wall,
        server_cpu_cores=(server_cpu / wall) if watched else None,
        machine_busy_cores=busy / wall,
        # Everything else on the machine (other jobs): it competes with the server for the cores.
        other_cpu_cores=max(busy - loadgen_cpu - server_cpu, 0.0) / wall if watched else None,
        connects=run.connects,
        transport_errors=run.transport_errors,
        total_samples=len(run.samples),
        server_down=server_down,
        stale_connection_retries=run.stale_retries,
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
