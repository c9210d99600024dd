"""Reading a payload log: its parts in a directory or under an S3 prefix, streamed record by record.

Memory stays bounded whatever the log holds: parts are read one at a time, gzip is decompressed in chunks
and a line is read up to MAX_LINE_BYTES (a longer one is skipped). A line that is not a record (bad JSON,
a basket the API would refuse, a bad time) is counted and named by part and line, never fatal; a part that
cannot be read (truncated gzip, a store error) is counted and named too, and the rest is read.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import msgspec
from botocore.exceptions import BotoCoreError

from ..artifact.s3 import StoreError, list_keys, open_object
from ..contract import Basket

log = logging.getLogger("retail_prediction.monitor")

PART_SUFFIX = ".jsonl.gz"
# The longest record read: a basket at MAX_BASKET_LINES with every code at its longest is well under it.
MAX_LINE_BYTES = 4 * 1024 * 1024
# Malformed lines named one by one in warnings; beyond it they are only counted (and summed up at the end).
NAMED_PROBLEMS = 20


class Record(msgspec.Struct):
    """What the monitor reads of a logged line (other fields are ignored); the basket is checked as the API
    checks it."""

    time: str
    basket: Basket
    model_version: str | None = None
    answer: dict[str, Any] | None = None
    latency_ms: float | None = None


@dataclass
class ReadStats:
    """How the read went: parts read and unreadable, records, malformed lines (the first few named)."""

    parts: int = 0
    unreadable_parts: int = 0
    records: int = 0
    malformed_lines: int = 0
    problems: list[str] = field(default_factory=list)
    warn: Callable[[str], None] = log.warning  # where a problem is said as it is met (the CLI: stderr)

    def problem(self, message: str) -> None:
        if len(self.problems) < NAMED_PROBLEMS:
            self.problems.append(message)
            self.warn(message)


def hour_of(record: Record) -> str:
    """The record's UTC hour, `YYYY-MM-DDTHH` (ValueError when its time is not an ISO time)."""
    at = datetime.fromisoformat(record.time)
    if at.utcoffset():
        raise ValueError(f"time {record.time!r} is not UTC")
    return at.strftime("%Y-%m-%dT%H")


def _parts(uri: str) -> Iterator[tuple[str, Any]]:
    """(name, opener) of each part under a directory or an s3:// prefix, in name order (= by hour)."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[5:].partition("/")
        if not bucket:
            raise StoreError("invalid", f"{uri} names no bucket")
        prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        for key in list_keys(bucket, prefix):
            if key.endswith(PART_SUFFIX):
                yield f"s3://{bucket}/{key}", lambda key=key: open_object(bucket, key)
        return
    root = Path(uri.removeprefix("file://")).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"payload log directory {root} does not exist")
    for path in sorted(root.rglob(f"*{PART_SUFFIX}")):
        yield str(path), lambda path=path: path.open("rb")


def _lines(stream: IO[bytes]) -> Iterator[bytes | None]:
    """The lines of a gzip stream; None for a line over MAX_LINE_BYTES (its bytes are skipped)."""
    with gzip.GzipFile(fileobj=stream) as text:
        while True:
            line = text.readline(MAX_LINE_BYTES + 1)
            if not line:
                return
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):
                    line = text.readline(MAX_LINE_BYTES)
                yield None
                continue
            yield line


def read_records(uri: str, stats: ReadStats) -> Iterator[tuple[str, Record]]:
    """(hour, record) of every well-formed line of the log at `uri`, counting the rest in `stats`.
    A missing directory or an S3 listing that fails raises (FileNotFoundError, StoreError)."""
    decoder = msgspec.json.Decoder(Record)
    for name, opener in _parts(uri):
        stats.parts += 1
        number = 0
        try:
            with closing(opener()) as stream:
                for number, line in enumerate(_lines(stream), start=1):
                    if line is None:
                        stats.malformed_lines += 1
                        stats.problem(f"{name}, line {number}: longer than {MAX_LINE_BYTES} bytes, skipped")
                        continue
                    if not line.strip():
                        continue
                    try:
                        record = decoder.decode(line)
                        hour = hour_of(record)
                    except (msgspec.DecodeError, ValueError) as exc:
                        stats.malformed_lines += 1
                        stats.problem(f"{name}, line {number}: not a payload record: {exc}")
                        continue
                    stats.records += 1
                    yield hour, record
        except (OSError, EOFError, zlib.error, StoreError, BotoCoreError) as exc:
            stats.unreadable_parts += 1
            stats.problem(f"{name}: unreadable after line {number}: {exc}")
