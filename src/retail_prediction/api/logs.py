"""Log lines on stderr: JSON objects for log collectors, or plain text lines for a person at a terminal.

Every record carries time, level, logger and message, plus whatever the call site passed in `extra`
(request_id, route, status, latency_ms, model_version, ...). uvicorn's own loggers are routed through
the same formatter (without the `color_message` copy it adds, escape codes and all); its access log is
replaced by ours (which knows the route and model version). LOG_FORMAT picks the form: `json`, `text`, or
`auto` (the default): text when stderr is a terminal, JSON otherwise.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading
import time
from typing import Any

import orjson

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
# uvicorn's `color_message` is its message again with terminal escape codes: never logged.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "color_message"}

ACCESS_LOGGER = "retail_prediction.access"


_second: tuple[int, str] = (-1, "")  # the last whole second formatted: one strftime per second, not per line


def _timestamp(created: float) -> str:
    global _second
    whole = int(created)
    if _second[0] != whole:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int(created % 1 * 1000):03d}Z"


def _entry(formatter: logging.Formatter, record: logging.LogRecord) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "time": _timestamp(record.created),
        "level": record.levelname.lower(),
        "logger": record.name,
        "message": record.getMessage(),
    }
    entry.update((k, v) for k, v in vars(record).items() if k not in _STANDARD and v is not None)
    if record.exc_info:
        # Server-side only: the traceback goes to the log, never into a response.
        entry["exception"] = formatter.formatException(record.exc_info)
    return entry


def text_line(entry: dict[str, Any]) -> str:
    """`time level logger: message key=value ...`, the exception (if any) on the lines after it."""
    fields = " ".join(f"{k}={v}" for k, v in entry.items()
                      if k not in ("time", "level", "logger", "message", "exception"))
    line = f"{entry['time']} {entry['level']:<7} {entry['logger']}: {entry['message']}"
    line = f"{line}  {fields}" if fields else line
    return f"{line}\n{entry['exception']}" if "exception" in entry else line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(_entry(self, record), default=str).decode()


class TextFormatter(logging.Formatter):
    """Plain lines for a person reading a terminal: no JSON, no escape codes."""

    def format(self, record: logging.LogRecord) -> str:
        return text_line(_entry(self, record))


def text_wanted(log_format: str, stream: Any = None) -> bool:
    """Whether LOG_FORMAT (`json`, `text` or `auto`) means text lines on `stream` (default: stderr)."""
    if log_format != "auto":
        return log_format == "text"
    isatty = getattr(stream if stream is not None else sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time of the call (test runners swap it), after the access
    lines still waiting, so the log stays in order."""

    def emit(self, record: logging.LogRecord) -> None:
        _access_lines.flush()
        super().emit(record)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure(level: str = "info", log_format: str = "auto") -> None:
    """Send our and uvicorn's loggers to stderr at `level`, as JSON or text (`text_wanted`); idempotent."""
    global _text_access
    _text_access = text_wanted(log_format)
    handler = _StderrHandler()
    handler.setFormatter(TextFormatter() if _text_access else JsonFormatter())
    for name in ("retail_prediction", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    # Our middleware writes the access line (with route and model version); uvicorn's would be a duplicate.
    logging.getLogger("uvicorn.access").disabled = True


# Access lines are written together, at most this long after the first of them was made...
ACCESS_FLUSH_SECONDS = 0.02
# ...or as soon as this many are waiting.
ACCESS_FLUSH_LINES = 256


class _AccessLines:
    """Access lines, written together by one system call every ACCESS_FLUSH_SECONDS.

    One write per request was a measured 2 µs of every /predict call at 8 connections (the log file's
    write is a system call even when nobody reads it). A line waits at most ACCESS_FLUSH_SECONDS, goes
    out before any other log record (the handler flushes first, so the log stays in order), and at exit.
    """

    def __init__(self) -> None:
        self._lines: list[bytes] = []
        self._lock = threading.Lock()

    def add(self, line: bytes) -> None:
        with self._lock:
            self._lines.append(line)
            waiting = len(self._lines)
        if waiting == 1:
            try:
                asyncio.get_running_loop().call_later(ACCESS_FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no event loop in this thread: nothing would flush it later
                self.flush()
        elif waiting >= ACCESS_FLUSH_LINES:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
            if not lines:
                return
            stream = sys.stderr
            stream.flush()  # what was written as text goes first
            data = b"".join(lines)
            buffer = getattr(stream, "buffer", None)
            if buffer is None:
                stream.write(data.decode())
                stream.flush()
            else:
                buffer.write(data)
                buffer.flush()


_access_lines = _AccessLines()
_text_access = False  # access lines as text (set by `configure`)
flush_access_lines = _access_lines.flush
atexit.register(flush_access_lines)


def write_access_line(level: int, fields: dict[str, Any]) -> None:
    """The per-request access line, in the same shape as every other line, written directly.

    It is written once per request, so it skips the LogRecord/formatter machinery (a measurable share of
    a /predict request's CPU), and with the other lines of its event-loop iteration (`_AccessLines`); the
    caller checks the level with `isEnabledFor` first.
    """
    entry = {"time": _timestamp(time.time()), "level": logging.getLevelName(level).lower(),
             "logger": ACCESS_LOGGER, "message": "request", **fields}
    if _text_access:
        _access_lines.add(f"{text_line(entry)}\n".encode())
    else:
        _access_lines.add(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))


def uvicorn_log_config() -> dict[str, Any]:
    """A uvicorn log config that leaves the loggers to `configure` (uvicorn's default would reset them)."""
    return {"version": 1, "disable_existing_loggers": False}
