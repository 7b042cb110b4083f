"""Structured logging: one JSON object per line, so log shippers need no parsing rules."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any, BinaryIO

# Attributes every LogRecord has; anything else passed via `extra=` becomes a JSON field.
_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Render a record as a JSON line with its `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO", levels: str = "") -> None:
    """Send the `service` loggers to stderr as JSON lines (idempotent); `levels` sets single
    loggers, e.g. "service.access=WARNING,service.batching=DEBUG"."""
    logger = logging.getLogger("service")
    logger.setLevel(level.upper())
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
    logger.propagate = False
    logging.captureWarnings(True)  # Python warnings (TensorFlow's, Keras') as JSON, not plain text
    for name, value in _parse_levels(levels).items():
        logging.getLogger(name).setLevel(value or level.upper())


def _parse_levels(levels: str) -> dict[str, str]:
    """"a=WARNING,b=DEBUG" -> {"a": "WARNING", "b": "DEBUG"}."""
    parsed = {}
    for item in filter(None, (part.strip() for part in levels.split(","))):
        name, _, value = item.partition("=")
        parsed[name.strip()] = value.strip().upper()
    return parsed


def gunicorn_logconfig(level: str = "INFO", levels: str = "") -> dict[str, Any]:
    """Gunicorn's own loggers (master, worker lifecycle, errors) as the same JSON lines;
    `levels` (SERVING_LOG_LEVELS) applies to the master's loggers too, e.g. gunicorn.error=WARNING."""
    loggers: dict[str, dict[str, Any]] = {
        "gunicorn.error": {"level": level.upper(), "handlers": ["stderr"], "propagate": False},
        "gunicorn.access": {"level": level.upper(), "handlers": ["stderr"], "propagate": False},
    }
    for name, value in _parse_levels(levels).items():
        loggers.setdefault(name, {})["level"] = value or level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "service.logs.JsonFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "loggers": loggers,
        "root": {"level": "WARNING", "handlers": ["stderr"]},
    }


# absl/glog line prefixes (TensorFlow's and gRPC core's C++ logging): I0000 00:00:... file.cc:1] text
_NATIVE_LEVEL = re.compile(rb"^([IWEF])\d{4} ")
_LEVELS = {b"I": "info", b"W": "warning", b"E": "error", b"F": "critical"}


def as_json_line(raw: bytes) -> bytes:
    """A line written to fd 2 as one JSON object: JSON objects pass unchanged, anything else
    (C++ logging, a crash dump) is wrapped as the message of logger "stderr"."""
    line = raw.rstrip(b"\r\n")
    if line.startswith(b"{"):
        try:
            if isinstance(json.loads(line), dict):
                return line + b"\n"
        except ValueError:
            pass
    match = _NATIVE_LEVEL.match(line)
    level = _LEVELS[match.group(1)] if match else ("warning" if line.startswith(b"WARNING") else "error")
    now = time.time()
    entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
             "level": level, "logger": "stderr", "message": line.decode("utf-8", "replace")}
    return json.dumps(entry).encode() + b"\n"


def pump(source: BinaryIO, target: BinaryIO) -> None:
    """Copy lines from `source` to `target` as JSON lines until end of file."""
    for raw in source:
        if raw.strip():
            try:
                target.write(as_json_line(raw))
            except Exception:  # noqa: BLE001 - never lose a line
                target.write(raw)
            target.flush()


class NativeStderr:
    """This process's fd 2 through a pipe, so that what C++ code writes there (TensorFlow's absl
    start-up lines ignore TF_CPP_MIN_LOG_LEVEL) leaves as JSON lines too.

    Started in each Gunicorn worker (post_fork), closed at its exit. The reader is a small
    process of its own, not a thread: when the worker dies natively (abort, segfault), what it
    wrote last, the crash report included, is still read and written out.
    """

    def __init__(self) -> None:
        sys.stderr.flush()
        self._real = os.dup(2)
        read_fd, write_fd = os.pipe()
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = f"import sys; sys.path.insert(0, {root!r}); from service.logs import _pump_main; _pump_main()"
        self._pump = subprocess.Popen([sys.executable, "-c", code], stdin=read_fd, stdout=self._real,
                                      stderr=self._real, close_fds=True)
        os.close(read_fd)
        os.dup2(write_fd, 2)
        os.close(write_fd)

    def close(self, timeout_s: float = 5.0) -> None:
        """Point fd 2 back at the real stderr; the reader sees the end, writes what is left, exits."""
        sys.stderr.flush()
        os.dup2(self._real, 2)
        try:
            self._pump.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._pump.kill()


def _pump_main() -> None:
    # NOTE: only the end of the pipe ends it: a terminal's Ctrl-C or a group SIGTERM reaches the
    # worker too, and the worker's last lines must still come out.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pump(sys.stdin.buffer, sys.stdout.buffer)
