"""Pieces of `make harden`: /proc sampling, the load driver, stalled uploads, hostile bodies."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Self

import requests

from bench.common import log
from bench.loadgen import cpu_seconds, machine_busy_seconds
from bench.servers import REPO_ROOT, HttpServer


def children(pid: int) -> list[int]:
    """Direct children of `pid` (the gunicorn master's workers), from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def status_kb(pid: int, field: str) -> int | None:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM); None when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler:
    """Every `interval_s`: the master's children and each one's VmRSS (kB), in a thread."""

    def __init__(self, master_pid: int, interval_s: float = 1.0) -> None:
        self.master_pid, self.interval_s = master_pid, interval_s
        self.samples: list[tuple[float, dict[int, int]]] = []
        self.cpu: list[tuple[float, float, float]] = []  # (t, machine busy s, server tree CPU s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = {pid: kb for pid in children(self.master_pid) if (kb := status_kb(pid, "VmRSS")) is not None}
            now = time.monotonic() - self.t0
            self.samples.append((now, rss))
            self.cpu.append((now, machine_busy_seconds(), cpu_seconds([self.master_pid, *rss])))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Self:
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def totals_mb(self, start_s: float, end_s: float) -> list[float]:
        """Summed worker RSS (MB) of the samples taken in [start_s, end_s)."""
        return [sum(rss.values()) / 1024 for t, rss in self.samples if start_s <= t < end_s and rss]


    def other_cores(self, start_s: float, end_s: float) -> float:
        """Cores busy with anything but the server (other jobs, the load generator) in the window."""
        inside = [c for c in self.cpu if start_s <= c[0] < end_s]
        if len(inside) < 2:
            return float("nan")
        (t0, busy0, srv0), (t1, busy1, srv1) = inside[0], inside[-1]
        return max((busy1 - busy0) - (srv1 - srv0), 0.0) / max(t1 - t0, 1e-9)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * 0.99
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def run_load(port: int, payloads: list[Path], *, mode: str, duration_s: float, concurrency: int = 1,
             rate: float = 0.0, signal_pid: int = 0, signal_name: str = "SIGTERM", signal_at_s: float = 0.0,
             seed: int = 0, background: bool = False) -> Any:
    """bench.harden_load in its own process; its JSON (or the Popen when `background`)."""
    argv = [sys.executable, "-m", "bench.harden_load", "--port", str(port), "--mode", mode,
            "--duration-s", str(duration_s), "--concurrency", str(concurrency), "--rate", f"{rate:.3f}",
            "--seed", str(seed)]
    for path in payloads:
        argv += ["--payload", str(path)]
    if signal_pid:
        argv += ["--signal-pid", str(signal_pid), "--signal", signal_name, "--signal-at-s", str(signal_at_s)]
    process = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process if background else finish_load(process)


def finish_load(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"harden_load failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def latencies_ms(samples: list[list[Any]], start_s: float = 0.0, end_s: float = 1e12) -> list[float]:
    """Latency (from the scheduled send) of the 200s scheduled in [start_s, end_s)."""
    return [(done - sched) * 1000 for sched, done, status, *_ in samples if status == 200 and start_s <= sched < end_s]


# --- stalled uploads ------------------------------------------------------------------------------

def stalled_uploads(port: int, count: int, wait_s: float) -> list[dict[str, Any]]:
    """`count` uploads that send headers (Content-Length 200000) and 1 KB of body, then nothing.

    For each: the status the server answered (0: none), and seconds from the last byte sent until
    the server answered or closed (None: still open after wait_s)."""
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/tiff\r\n"
            "Content-Length: 200000\r\n\r\n").encode()
    socks, results = [], []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(head + b"\0" * 1024)
        socks.append((sock, time.monotonic()))
    for sock, sent in socks:
        data = b""
        remaining = sent + wait_s - time.monotonic()
        closed_after = None
        while remaining > 0:
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                closed_after = time.monotonic() - sent
                break
            if not chunk:
                closed_after = time.monotonic() - sent
                break
            data += chunk
            if closed_after is None and b"\r\n\r\n" in data:
                closed_after = time.monotonic() - sent  # answered; the close follows
            remaining = sent + wait_s - time.monotonic()
        sock.close()
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else 0
        results.append({"status": status, "answered_after_s": None if closed_after is None else round(closed_after, 2)})
    return results


# --- hostile bodies -------------------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _tiff(entries: list[tuple[int, int, int, int]], next_ifd: int, tail: bytes = b"") -> bytes:
    """Little-endian classic TIFF: header, one IFD at offset 8 (tag, type, count, value), tail."""
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in sorted(entries):
        ifd += struct.pack("<HHII", tag, kind, count, value)
    ifd += struct.pack("<I", next_ifd)
    return b"II*\0" + struct.pack("<I", 8) + ifd + tail


def builtin_hostile() -> list[dict[str, Any]]:
    """The built-in hostile set: name, path, content type, body."""
    from bench.payloads import png_bytes, random_fields

    good_png = png_bytes(random_fields(1, 64, 64, seed=3)[0])
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 16, 0, 0, 0, 0)
    png_bomb = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                + _png_chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + _png_chunk(b"IEND", b""))
    entries_12 = 8  # IFD at 8: 2 + 12 * n + 4 bytes, data after it
    data_at = 8 + 2 + 12 * entries_12 + 4
    loop = _tiff([(256, 3, 1, 16), (257, 3, 1, 16), (258, 3, 1, 16), (259, 3, 1, 1), (262, 3, 1, 1),
                  (273, 4, 1, data_at), (278, 3, 1, 16), (279, 4, 1, 512)], next_ifd=8, tail=b"\0" * 512)
    tile = zlib.compress(b"\0" * (4096 * 4096), 9)
    entries_tile = 9
    tile_at = 8 + 2 + 12 * entries_tile + 4
    tile_bomb = _tiff([(256, 3, 1, 16), (257, 3, 1, 16), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 1),
                       (322, 3, 1, 4096), (323, 3, 1, 4096), (324, 4, 1, tile_at), (325, 4, 1, len(tile))],
                      next_ifd=0, tail=tile)
    deep = b"[" * 100_000 + b"]" * 100_000
    v2 = json.dumps({"inputs": [{"name": "image", "shape": [1, 2**32, 2**32, 1], "datatype": "UINT16",
                                 "data": [0]}]}).encode()
    nan_rows = "[" + ",".join("[" + ",".join(["NaN"] * 16) + "]" for _ in range(16)) + "]"
    v1_nan = ('{"instances": [' + nan_rows + "]}").encode()
    return [
        {"name": "truncated.png", "path": "/predict", "content_type": "image/png", "body": good_png[: len(good_png) // 2]},
        {"name": "png_100000x100000.png", "path": "/predict", "content_type": "image/png", "body": png_bomb},
        {"name": "tiff_ifd_loop.tif", "path": "/predict", "content_type": "image/tiff", "body": loop},
        {"name": "tiff_16x16_4096_zlib_tile.tif", "path": "/predict", "content_type": "image/tiff", "body": tile_bomb},
        {"name": "json_100000_deep.json", "path": "/predict", "content_type": "application/json", "body": deep},
        {"name": "v2_shape_2e32.json", "path": "/v2/models/cpe_cnn/infer", "content_type": "application/json", "body": v2},
        {"name": "v1_nan_pixels.json", "path": "/v1/models/cpe_cnn:predict", "content_type": "application/json", "body": v1_nan},
    ]


_TYPES = {".png": "image/png", ".tif": "image/tiff", ".tiff": "image/tiff", ".jpg": "image/jpeg",
          ".jpeg": "image/jpeg", ".json": "application/json", ".bin": "application/octet-stream"}


def hostile_set(folder: Path) -> tuple[str, list[dict[str, Any]]]:
    """Every file under tests/hostile/ when that folder has files; else the built-in set.

    A .json file there goes to /predict unless its name starts with v1_ or v2_ (then the TF
    Serving REST or Open Inference route of cpe_cnn); other types go to /predict."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in _TYPES) if folder.is_dir() else []
    if not files:
        return "built-in", builtin_hostile()
    try:  # the corpus says which TIFF page a case asks for (a missing page is the hostile part)
        from tests.hostile.make_corpus import CASES
        pages = {case.name: case.page for case in CASES if getattr(case, "page", 0)}
    except ImportError:
        pages = {}
    items = []
    for path in files:
        route = ("/v1/models/cpe_cnn:predict" if path.name.startswith("v1_") else
                 "/v2/models/cpe_cnn/infer" if path.name.startswith("v2_") else "/predict")
        if path.name in pages:
            route += f"?page={pages[path.name]}"
        items.append({"name": str(path.relative_to(folder)), "path": route,
                      "content_type": _TYPES[path.suffix.lower()], "body": path.read_bytes()})
    return str(folder.relative_to(REPO_ROOT)), items


# --- rows: formatting ------------------------------------------------------------------------------

def row(key: str, check: str, measured: str, limit: str, ok: bool, detail: dict[str, Any]) -> dict[str, Any]:
    log(f"{check}: {'PASS' if ok else 'FAIL'} — {measured}")
    return {"key": key, "check": check, "measured": measured, "limit": limit, "pass": bool(ok), "detail": detail}


def tally(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        out[value] = out.get(value, 0) + 1
    return out


def status_counts(samples: list[list[Any]]) -> dict[str, int]:
    return tally(str(s[2]) for s in samples if s[2])


def fate_counts(samples: list[list[Any]]) -> dict[str, int]:
    return tally(s[3] for s in samples if s[3])


def fmt(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}×{v}" for k, v in sorted(counts.items()))


def bad_list(bad: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['name']}={r['status']}/{r['seconds']:.2f}s" for r in bad) or "none"


def last_done(samples: list[list[Any]]) -> str:
    times = [s[1] for s in samples if s[1] is not None]
    return f"{min(times):.1f}–{max(times):.1f}" if times else "-"


def secs(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def error_code(response: requests.Response) -> str:
    try:
        error = response.json().get("error")
    except ValueError:
        return ""
    return error.get("code", "") if isinstance(error, dict) else str(error)[:60]


def loaded_lines(server: HttpServer) -> int:
    return server.log_tail(10_000_000).count('"model version available"')


def ready_streak(url: str, count: int) -> bool:
    for _ in range(count):
        try:
            if requests.get(f"{url}/readyz", timeout=2, headers={"Connection": "close"}).status_code != 200:
                return False
        except requests.RequestException:
            return False
    return True
