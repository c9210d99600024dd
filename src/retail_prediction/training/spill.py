"""Compact per-line records of the training weeks on disk, one chunk per file, so the passes of streamed
training (counting, the latent classes' estimations, features) read NumPy arrays, not CSV, and memory does
not grow with the number of lines. Also the growing code vocabularies and price counts of the first pass."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ..contract import Codes


@dataclass(frozen=True)
class Chunk:
    """Whole baskets, their lines grouped by basket. Codes are global ids in first-seen order (-1: missing)."""

    rows: np.ndarray  # (levels, n_lines) int32: product, then each hierarchy level
    basket: np.ndarray  # (n_lines,) int32, 0..n_baskets-1, non-decreasing
    spend: np.ndarray  # (n_lines,) float64
    quantity: np.ndarray  # (n_lines,) float64
    label: np.ndarray  # (n_baskets,) int8: index in contract.LABELS
    week: np.ndarray  # (n_baskets,) int32
    key: np.ndarray  # (n_baskets,) uint64: hash of the basket id

    @property
    def n_baskets(self) -> int:
        return int(self.label.shape[0])


class Spill:
    """Chunks as .npy files in a folder (each array its own file, read memory-mapped where a pass needs only
    some of them)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.n_chunks = 0

    def write(self, chunk: Chunk) -> None:
        for f in fields(Chunk):
            np.save(self.directory / f"{self.n_chunks:06d}.{f.name}.npy", getattr(chunk, f.name))
        self.n_chunks += 1

    def array(self, i: int, name: str) -> np.ndarray:
        return np.load(self.directory / f"{i:06d}.{name}.npy", mmap_mode="r")

    def read(self, i: int) -> Chunk:
        return Chunk(**{f.name: np.asarray(self.array(i, f.name)) for f in fields(Chunk)})


class Vocab:
    """A growing code vocabulary: global id per code in first-seen order, and the first week it was seen."""

    def __init__(self) -> None:
        self.id_of: dict[str, int] = {}
        self.first_week = np.zeros(0, dtype=np.int64)

    def ids(self, codes: Codes | None, line_week: np.ndarray) -> np.ndarray:
        """Global id of each line's code (-1: missing), learning new codes; a code's distinct values only are
        looked up, not each line's."""
        n = line_week.shape[0]
        if codes is None:
            return np.full(n, -1, dtype=np.int32)
        used = np.flatnonzero(np.bincount(codes.index[codes.index >= 0], minlength=codes.values.size))
        get = self.id_of.setdefault
        local = np.full(codes.values.size, -1, dtype=np.int32)
        local[used] = [get(str(v), len(self.id_of)) for v in codes.values[used].tolist()]
        ids = np.where(codes.index >= 0, local[np.maximum(codes.index, 0)], -1).astype(np.int32)
        grown = len(self.id_of) - self.first_week.size
        if grown:
            self.first_week = np.concatenate([self.first_week, np.full(grown, np.iinfo(np.int64).max)])
        known = ids >= 0
        np.minimum.at(self.first_week, ids[known], line_week[known])
        return ids

    def sorted_view(self, last_week: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The sorted vocabulary of the codes seen by `last_week` (None: all), each global id's row in it (-1:
        not in it), and the global id of each row."""
        codes = np.array(list(self.id_of), dtype=str)
        keep = np.ones(codes.size, bool) if last_week is None else self.first_week <= last_week
        ids = np.flatnonzero(keep)
        ids = ids[np.argsort(codes[ids], kind="stable")]
        row = np.full(codes.size, -1, dtype=np.int32)
        row[ids] = np.arange(ids.size, dtype=np.int32)
        return codes[ids] if ids.size else np.array([], dtype=str), row, ids


def basket_keys(ids: np.ndarray) -> np.ndarray:
    """A 64-bit FNV-1a hash of each basket id (a NumPy str array), vectorised over its characters; the array's
    padding (NUL) is skipped, so an id hashes the same in a file of longer ids."""
    width = ids.dtype.itemsize // 4
    chars = np.ascontiguousarray(ids).view(np.uint32).reshape(ids.size, max(width, 1)).astype(np.uint64)
    h = np.full(ids.size, 0xCBF29CE484222325, dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):
        for j in range(chars.shape[1]):
            c = chars[:, j]
            h = np.where(c != 0, (h ^ c) * prime, h)
    return h


class PriceCounts:
    """How many lines have each distinct log unit price, per week: exact quantiles for any set of weeks, in
    memory bounded by the distinct prices (not the lines)."""

    def __init__(self) -> None:
        self.by_week: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def add(self, week: int, log_price: np.ndarray) -> None:
        values, counts = np.unique(log_price, return_counts=True)
        if week in self.by_week:
            values, counts = _merged([self.by_week[week], (values, counts)])
        self.by_week[week] = (values, counts)

    def quantiles(self, q: np.ndarray, last_week: int | None) -> np.ndarray:
        """`np.quantile(log_prices, q)` (linear method) of the lines of the weeks up to `last_week`."""
        parts = [vc for w, vc in self.by_week.items() if last_week is None or w <= last_week]
        if not parts:
            return np.zeros(0)
        values, counts = _merged(parts)
        return quantile_of_counts(values, counts, q)


def _merged(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    values, inverse = np.unique(np.concatenate([v for v, _ in parts]), return_inverse=True)
    return values, np.bincount(inverse, weights=np.concatenate([c for _, c in parts]),
                               minlength=values.size).astype(np.int64)


def quantile_of_counts(values: np.ndarray, counts: np.ndarray, q: np.ndarray) -> np.ndarray:
    """NumPy's linear-method quantiles of the data with `counts[i]` copies of the sorted `values[i]`, the
    same bits (the same virtual index, gamma and interpolation as `numpy.quantile`)."""
    n = int(counts.sum())
    ends = np.cumsum(counts)
    virtual = (n - 1) * np.asarray(q, dtype=np.float64)
    previous = np.floor(virtual).astype(np.intp)
    nxt = previous + 1
    top = virtual >= n - 1
    previous[top], nxt[top] = n - 1, n - 1
    a = values[np.searchsorted(ends, previous, side="right")]
    b = values[np.searchsorted(ends, nxt, side="right")]
    gamma = np.where(top, virtual + 1, virtual - previous)  # numpy's gamma (irrelevant where a == b)
    diff = b - a
    out = a + diff * gamma
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), out)


KEY_RECORD = np.dtype([("key", "<u8"), ("file", "<u4")])


class KeyLedger:
    """Every basket's key and the file it came from, on disk in BUCKETS files by the key's top bits, so the
    check that no basket spans two files holds one bucket in memory (1/BUCKETS of the baskets), never 8 bytes
    for every basket read."""

    BUCKETS = 64

    def __init__(self, directory: Path) -> None:
        self.directory = directory / "keys"
        self.directory.mkdir(exist_ok=True)

    def _path(self, bucket: int) -> Path:
        return self.directory / f"{bucket:02d}.keys"

    def add(self, keys: np.ndarray, file: int) -> None:
        bucket = (keys >> np.uint64(58)).astype(np.intp)  # the top 6 bits: BUCKETS = 64
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(self.BUCKETS + 1))
        records = np.empty(keys.size, KEY_RECORD)
        records["key"], records["file"] = keys[order], file
        for b in range(self.BUCKETS):
            if bounds[b] < bounds[b + 1]:
                with self._path(b).open("ab") as out:
                    records[bounds[b]:bounds[b + 1]].tofile(out)

    def repeated(self) -> Iterator[tuple[int, int, int]]:
        """(key, earlier file, later file) for each key recorded from two files, bucket by bucket."""
        for b in range(self.BUCKETS):
            if not self._path(b).exists():
                continue
            records = np.fromfile(self._path(b), KEY_RECORD)
            records = records[np.argsort(records["key"], kind="stable")]  # stable: a key's files in order
            key, file = records["key"], records["file"]
            for i in np.flatnonzero((key[1:] == key[:-1]) & (file[1:] != file[:-1])).tolist():
                yield int(key[i]), int(file[i]), int(file[i + 1])
