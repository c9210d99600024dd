"""Transaction files in chunks of whole files: input of any size scored in bounded memory.

A chunk is one or more consecutive files (up to `chunk_bytes` on disk, at least one file) read into one table.
A weekly file holds its baskets whole, so a basket never spans two chunks as long as no basket ID is in two
files; that is checked, with memory that does not grow with the data: each file's smallest and largest ID
are kept, and only when a file's range overlaps an earlier one is the earlier file's ID column read again to
find a shared ID, which is refused naming the ID and both files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import lgsr
from .errors import DataError
from .reading import _combined, read_transactions, resolve_files
from .week_span import outside_weeks

# ~2.5 M lines of gzip CSV, or one full-scale Parquet week (two weeks in one table cost a dictionary unification
# and twice the memory for no speed); the real 94 weeks (32 MB) are one chunk
CHUNK_BYTES = 30 << 20
_READ_THREADS = 4  # as reading.py: Arrow's parsing releases the GIL
_NO_LINES = "hold no transaction lines"  # read_transactions' message for a file without lines
Weeks = tuple[int | None, int | None]  # first and last shop week to read (None: open)


@dataclass(frozen=True)
class Chunk:
    files: list[Path]
    table: pa.Table


@dataclass
class _BasketIdRanges:
    """(file, smallest ID, largest ID) of every file read so far: a shared ID must fall in two ranges."""

    seen: list[tuple[Path, str, str]] = field(default_factory=list)

    def check(self, path: Path, table: pa.Table) -> None:
        low, high = _id_range(table)
        if low is None or high is None:
            return
        for earlier, e_low, e_high in self.seen:
            if low <= e_high and e_low <= high:
                earlier_ids = _unique_ids(read_transactions([earlier], columns=[lgsr.BASKET_ID],
                                                            required=(lgsr.BASKET_ID,)))
                shared = np.intersect1d(_unique_ids(table), earlier_ids, assume_unique=True)
                if shared.size:
                    raise _shared_basket(path, table, earlier, shared)
        self.seen.append((path, low, high))


def _id_range(table: pa.Table) -> tuple[str | None, str | None]:
    """Smallest and largest basket ID, from the dictionaries (a dictionary may hold an unused value: that only
    widens the range, so a shared ID is never missed)."""
    chunks = [c.dictionary if pa.types.is_dictionary(c.type) else c for c in table.column(lgsr.BASKET_ID).chunks]
    ranges = [pc.min_max(c.cast(pa.string())) for c in chunks if len(c)]
    if not ranges:
        return None, None
    return min(r["min"].as_py() for r in ranges), max(r["max"].as_py() for r in ranges)


def _unique_ids(table: pa.Table) -> np.ndarray:
    values = pc.unique(table.column(lgsr.BASKET_ID).cast(pa.string()))
    return np.sort(np.asarray(values.to_numpy(zero_copy_only=False), dtype=str))


def _shared_basket(path: Path, table: pa.Table, earlier: Path, shared: np.ndarray) -> DataError:
    """The error at the first line of `path` whose basket is also in `earlier`."""
    ids = table.column(lgsr.BASKET_ID).cast(pa.string())
    row = int(np.flatnonzero(pc.is_in(ids, pa.array(shared)).to_numpy(zero_copy_only=False))[0])
    basket_id = ids[row].as_py()
    first_line = 1 if str(path).endswith(".parquet") else 2  # a CSV's line 1 is its header
    return DataError(path, f"basket {basket_id} is also in {earlier}: files are scored one after another, so "
                     "each basket's lines must all be in one file", line=first_line + row, column=lgsr.BASKET_ID)


def _groups(files: list[Path], chunk_bytes: int) -> list[list[Path]]:
    """Consecutive files, a group closed once it reaches `chunk_bytes` on disk."""
    groups: list[list[Path]] = [[]]
    size = 0
    for path in files:
        if groups[-1] and size >= chunk_bytes:
            groups.append([])
            size = 0
        groups[-1].append(path)
        try:
            size += os.stat(path).st_size
        except (OSError, TypeError):  # not a local file: one file per chunk
            size += chunk_bytes
    return groups


def _read_one(path: Path, columns: Sequence[str], required: Sequence[str], weeks: Weeks) -> pa.Table | None:
    if outside_weeks(path, *weeks):
        return None
    try:
        return read_transactions([path], columns=columns, required=required)
    except DataError as exc:
        if str(exc).endswith(_NO_LINES):
            return None
        raise


def _read_group(group: list[Path], columns: Sequence[str], required: Sequence[str],
                ranges: _BasketIdRanges, weeks: Weeks) -> Chunk | None:  # fmt: skip
    """A group's files read up to _READ_THREADS at a time (small weekly files parse on one thread each), checked
    in order, combined into one table."""
    with ThreadPoolExecutor(min(_READ_THREADS, len(group))) as pool:
        tables = []
        read = pool.map(lambda p: _read_one(p, columns, required, weeks), group)
        for path, table in zip(group, read, strict=True):
            if table is not None:
                ranges.check(path, table)
                tables.append(table)
    return Chunk(group, _combined(tables)) if tables else None


def file_chunks(spec: str | Path | Sequence[str | Path], *, columns: Iterable[str], required: Iterable[str],
                chunk_bytes: int = CHUNK_BYTES, weeks: Weeks = (None, None)) -> Iterator[Chunk]:  # fmt: skip
    """The files of `spec` in order, a chunk at a time; the next chunk is read in a thread while the caller
    works on this one (Arrow's reading releases the GIL), so at most two chunks are held. Parquet files whose
    footer shows no line in `weeks` (first, last; either None) are skipped unread; the caller still filters
    the lines of the others."""
    groups = _groups(resolve_files(spec), chunk_bytes)
    columns, required = tuple(columns), tuple(required)
    ranges = _BasketIdRanges()
    found = False
    with ThreadPoolExecutor(1) as pool:
        pending: Future[Chunk | None] = pool.submit(_read_group, groups[0], columns, required, ranges, weeks)
        for following in [*groups[1:], None]:
            chunk = pending.result()
            if following is not None:
                pending = pool.submit(_read_group, following, columns, required, ranges, weeks)
            if chunk is not None:
                found = True
                yield chunk
    if not found:
        where = "" if weeks == (None, None) else f" in weeks {weeks[0] or 'any'}..{weeks[1] or 'any'}"
        raise DataError(", ".join(str(p) for g in groups for p in g), f"the files {_NO_LINES}{where}")
