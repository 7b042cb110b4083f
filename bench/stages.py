"""The service's CPU time per image, split by stage, from a sampling profile under load.

Wall-clock stage timings (the `Server-Timing` header) include waiting; this counts CPU only.
During a closed-loop cell, py-spy (bench venv) samples every Python thread of each worker at
`--rate` Hz without pausing it, skipping threads the kernel has not marked runnable (blocked
on the GIL, a lock, a socket). Each sampled stack is put in one stage by the first rule below
that one of its frames matches. Then each thread's own CPU time (/proc/<pid>/task/<tid>/stat
over the same window) is split in the proportions of that thread's samples, so a thread that
was runnable but waiting for a core weighs no more than the CPU it actually got. Threads
py-spy does not know are TensorFlow's own pools: counted under the model. Divided by the
images answered in the window: ms of CPU per image.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import Deployment, loadgen_argv
from bench.harden_checks import children
from bench.loadgen import _CLOCK_TICKS
from bench.servers import REPO_ROOT, peer_python

# (stage, substrings of a frame "function (file:line)"); first stage with a matching frame wins.
RULES: list[tuple[str, tuple[str, ...]]] = [
    ("log", ("logging/__init__.py", "service/logs.py", "gunicorn/glogging.py")),
    ("metrics", ("prometheus_client/", "service/metrics.py", "service/api/metrics.py")),
    ("model", ("service/backends/", "tensorflow/", "keras/")),
    ("decode", ("service/codecs/", "tifffile/", "PIL/", "imagecodecs/")),
    ("preprocess", ("service/preprocessing.py", "service/quality.py")),
    ("input hash", ("sha256 (service/",)),
    ("queue/batcher", ("service/batching/",)),
    ("serialise", ("orjson", "json_provider.py", "service/schemas.py", "pydantic/", "flask/json/", "json/")),
    ("body read", ("service/api/body.py", "service/api/uploads.py", "werkzeug/formparser.py",
                   "werkzeug/sansio/multipart.py", "werkzeug/wsgi.py")),
    ("HTTP parse", ("gunicorn/http/", "gunicorn_worker.py")),
]
# A thread sampled in a wait was runnable there: woken and not yet running (its wake-up CPU).
# functools.cached_property takes one lock per property for all instances on Python 3.11.
WAIT = "queue/lock wait (wake-ups)"
_WAIT_LEAVES = ("Condition.wait (threading.py", "Event.wait (threading.py", "_worker (concurrent/futures/thread.py",
                "cached_property.__get__ (functools.py:997)")
HTTP_IO = "HTTP I/O (Gunicorn, outside Flask)"
OTHER = "other (Flask, Gunicorn, glue)"
NATIVE = "model (TensorFlow's threads)"
STAGES = [WAIT] + [stage for stage, _ in RULES] + [HTTP_IO, OTHER, NATIVE]
_THREAD = re.compile(r"thread \((\d+)\)")


def classify(stack: str) -> str:
    """The stage of one collapsed stack ("f (file:line);g (file:line)", root first)."""
    if stack.rpartition(";")[2].startswith(_WAIT_LEAVES):
        return WAIT
    for stage, needles in RULES:
        if any(needle in stack for needle in needles):
            return stage
    return HTTP_IO if "gunicorn/" in stack and "flask/" not in stack else OTHER


def _thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of `pid` (a thread's own /proc entry under task/)."""
    out: dict[int, float] = {}
    try:
        tids = [int(entry.name) for entry in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return out
    for tid in tids:
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_bytes().decode(errors="replace").rsplit(")", 1)[1]
        except OSError:
            continue
        values = fields.split()
        out[tid] = (int(values[11]) + int(values[12])) / _CLOCK_TICKS
    return out


def _python_tids(pyspy: Path, pid: int) -> set[int]:
    dump = subprocess.run([str(pyspy), "dump", "--pid", str(pid), "--nonblocking"], check=False,
                          capture_output=True, text=True)
    return {int(m) for m in re.findall(r"^Thread (\d+)", dump.stdout, flags=re.MULTILINE)}


def _samples(path: Path) -> dict[int, Counter[str]]:
    """Stage sample counts per thread id, from `py-spy record --threads --format raw`."""
    counts: dict[int, Counter[str]] = {}
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            match = _THREAD.match(stack)
            if match and count.isdigit():
                counts.setdefault(int(match.group(1)), Counter())[classify(stack)] += int(count)
    return counts


def split_cpu(samples: dict[int, Counter[str]], cpu_s: dict[int, float], python_tids: set[int]) -> dict[str, float]:
    """CPU seconds per stage: each thread's CPU in its samples' proportions (see the module doc)."""
    out = dict.fromkeys(STAGES, 0.0)
    for tid, cpu in cpu_s.items():
        counts = samples.get(tid)
        if counts:
            total = sum(counts.values())
            for stage, n in counts.items():
                out[stage] += cpu * n / total
        elif tid in python_tids:
            out[OTHER] += cpu  # a Python thread never seen runnable at a sample
        else:
            out[NATIVE] += cpu
    return out


def profile_stages(deployment: Deployment, tmp: Path, concurrency: int, duration_s: int,
                   warmup_s: float = 2.0, rate_hz: int = 100) -> dict[str, Any]:
    """CPU ms per image by stage for the service in `deployment`, under a closed loop."""
    import json

    assert deployment.server is not None
    pyspy = Path(peer_python()).parent / "py-spy"
    workers = children(deployment.server.pid)
    load = subprocess.Popen(loadgen_argv(deployment.server.port, deployment.model, [], concurrency=concurrency,
                                         warmup_s=warmup_s, duration_s=duration_s + 1.0),
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(warmup_s + 0.3)
    before = {pid: _thread_cpu(pid) for pid in workers}
    started = time.monotonic()
    outputs = [tmp / f"pyspy-{pid}.txt" for pid in workers]
    spies = [subprocess.Popen([str(pyspy), "record", "--pid", str(pid), "--rate", str(rate_hz), "--nonblocking",
                               "--threads", "--format", "raw", "-d", str(duration_s), "-o", str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for pid, out in zip(workers, outputs)]
    for spy in spies:
        spy.wait(duration_s + 60)
    window = time.monotonic() - started
    after = {pid: _thread_cpu(pid) for pid in workers}
    python_tids = {pid: _python_tids(pyspy, pid) for pid in workers}
    out, err = load.communicate(timeout=duration_s + 120)
    if load.returncode != 0:
        raise RuntimeError(f"loadgen failed:\n{err[-2000:]}")
    cell = json.loads(out.strip().splitlines()[-1])
    images = max(cell["throughput_rps"] * window, 1.0)
    cpu_s = dict.fromkeys(STAGES, 0.0)
    samples_total = 0
    for pid, path in zip(workers, outputs):
        samples = _samples(path)
        samples_total += sum(sum(c.values()) for c in samples.values())
        deltas = {tid: cpu - before[pid].get(tid, 0.0) for tid, cpu in after[pid].items()}
        for stage, seconds in split_cpu(samples, deltas, python_tids[pid] | set(samples)).items():
            cpu_s[stage] += seconds
    ms = {stage: 1000 * seconds / images for stage, seconds in cpu_s.items()}
    return {"concurrency": concurrency, "window_s": window, "images": images, "samples": samples_total,
            "cpu_s": cpu_s, "cpu_ms_per_image": ms, "total_cpu_ms_per_image": sum(ms.values()),
            "throughput_rps": cell["throughput_rps"], "p99_ms": cell["p99_ms"], "sampling_rate_hz": rate_hz,
            "py_spy_errors": [spy.stderr.read()[-300:] for spy in spies if spy.returncode and spy.stderr]}
