"""Read transaction files (LGSR schema) into Arrow tables: columnar, streaming, with clear errors.

Files are read batch by batch with Arrow's CSV reader (or Parquet reader); string columns arrive
dictionary-encoded so a file of millions of lines never becomes millions of Python objects. Every file is
checked as it is read, and a bad file raises `DataError` naming the file, the line and the column.
"""

from __future__ import annotations

import glob
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..contract import LABELS, SCIENTIFIC_ID_PATTERN
from . import lgsr
from .errors import DataError
from .sources import S3Object, Source, is_s3, open_file, open_stream, resolve_s3

DATA_SUFFIXES = (".csv", ".csv.gz", ".parquet")
_BLOCK_SIZE = 8 << 20
_MAX_READ_THREADS = 4
_DICT = pa.dictionary(pa.int32(), pa.string())
_SCIENTIFIC = SCIENTIFIC_ID_PATTERN
_INTEGER = r"^\s*[+-]?[0-9]+\s*$"
_NUMBER = r"^\s*[+-]?([0-9]+([.][0-9]*)?|[.][0-9]+)([eE][+-]?[0-9]+)?\s*$"

Progress = Callable[[str], None]
DataSpec = str | Path | S3Object | Sequence[str | Path | S3Object]


@dataclass
class ReadSummary:
    files: list[str] = field(default_factory=list)
    rows: int = 0
    seconds: float = 0.0


def resolve_files(spec: DataSpec) -> list[Source]:
    """A folder, a glob pattern, one file, their ``s3://`` forms (data/sources.py) or a list of any of these ->
    sorted list of data files (local `Path`s and `S3Object`s)."""
    items = [spec] if isinstance(spec, str | Path | S3Object) else list(spec)
    found: list[Source] = []
    for item in items:
        if is_s3(item):
            found += resolve_s3(item, _is_transactions_name)  # type: ignore[arg-type]
            continue
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if _is_transactions_file(p))
        elif path.is_file():
            found.append(path)
        elif any(ch in str(item) for ch in "*?["):
            found += sorted(Path(p) for p in glob.glob(str(item)) if Path(p).is_file())
        else:
            raise DataError(path, "no such file or folder")
    if not found:
        raise DataError(", ".join(str(i) for i in items), "no transaction files (.csv, .csv.gz, .parquet) found")
    return found


def _is_transactions_file(path: Path) -> bool:
    return path.is_file() and _is_transactions_name(path.name)


def _is_transactions_name(name: str) -> bool:
    # time.csv.gz in the data set's folder is a calendar, not transactions.
    return name.endswith(DATA_SUFFIXES) and not name.startswith("time.")


def read_transactions(
    spec: DataSpec,
    *,
    columns: Iterable[str] | None = None,
    required: Iterable[str] = lgsr.REQUIRED_FOR_TRAINING,
    progress: Progress | None = None,
    summary: ReadSummary | None = None,
) -> pa.Table:
    """Read and validate transaction files into one table with the current header names.

    `columns` limits what is kept (default: all columns of the schema present in the files); `required`
    columns must be present in every file.
    """
    files = resolve_files(spec)
    wanted = set(columns) if columns is not None else set(lgsr.ALL_COLUMNS)
    required = tuple(required)
    wanted |= set(required)
    started = time.monotonic()
    summary = summary if summary is not None else ReadSummary()
    tables = []
    last_report = 0.0
    for n, (path, batches) in enumerate(_read_files(files, wanted, required), 1):
        if batches:
            tables.append(pa.Table.from_batches(batches))
        summary.files.append(str(path))
        summary.rows += sum(b.num_rows for b in batches)
        # Report about once a second, not once a file: a folder may hold thousands of files.
        if progress and (time.monotonic() - last_report > 1.0 or n == len(files)):
            last_report = time.monotonic()
            progress(f"read {n}/{len(files)} files, {summary.rows:,} rows in {last_report - started:.1f}s")
    summary.seconds = time.monotonic() - started
    if not tables:
        raise DataError(", ".join(summary.files), "the files hold no transaction lines")
    return _combined(tables)


def _combined(tables: list[pa.Table]) -> pa.Table:
    """The files' tables as one, one chunk per column and one dictionary per string column (empties `tables`).

    Built a column at a time, each column's file chunks freed as soon as it is combined: the peak is the data
    plus about one column, not the two or three whole copies of a table-wide unify and combine.
    """
    table = pa.concat_tables(tables, promote_options="permissive")
    tables.clear()
    if not table.num_rows:
        return table
    for i, name in enumerate(table.column_names):
        column = pa.table([table.column(i)], names=[name]).unify_dictionaries().combine_chunks().column(0)
        table = table.set_column(i, name, column)
        del column
        # Arrow's allocator keeps freed pages for reuse; hand the file chunks' pages back as we go.
        pa.default_memory_pool().release_unused()
    return table


def _read_files(files: list[Source], wanted: set[str],
                required: tuple[str, ...]) -> Iterator[tuple[Source, list[pa.RecordBatch]]]:
    """Each file's batches, in order, files read up to _MAX_READ_THREADS at a time (within Arrow's CPU count):
    Arrow's decompression and parsing release the GIL. The first bad file's error is raised as soon as it is
    reached; files not started by then are not read."""
    pool = ThreadPoolExecutor(min(_MAX_READ_THREADS, pa.cpu_count()))
    try:
        futures = [pool.submit(lambda p: list(_read_file(p, wanted, required)), path) for path in files]
        for path, future in zip(files, futures, strict=True):
            yield path, future.result()
    finally:
        pool.shutdown(cancel_futures=True)


def _read_file(path: Source, wanted: set[str], required: tuple[str, ...]) -> Iterator[pa.RecordBatch]:
    if path.name.endswith(".parquet"):
        yield from _read_parquet(path, wanted, required)
    else:
        yield from _read_csv(path, wanted, required)


def _header(path: Source) -> list[str]:
    try:
        with open_stream(path) as stream:
            head = stream.read(1 << 16)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(path, f"cannot be read ({exc})") from None
    first = head.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace").strip("\r")
    if not first:
        raise DataError(path, "is empty: no header line", line=1)
    return [name.strip().strip('"') for name in first.split(",")]


def _normalised(names: list[str]) -> list[str]:
    return [lgsr.HEADER_ALIASES.get(name, name) for name in names]


def _check_required(path: Source, names: list[str], required: tuple[str, ...]) -> None:
    missing = [col for col in required if col not in names]
    if missing:
        raise DataError(path, f"missing required column(s) {', '.join(missing)}; header is: {','.join(names)}",
                        line=1)


def _column_types(names: Iterable[str]) -> dict[str, pa.DataType]:
    types: dict[str, pa.DataType] = {}
    for name in names:
        if name in lgsr.STRING_COLUMNS:
            types[name] = _DICT
        elif name in lgsr.INTEGER_COLUMNS:
            types[name] = pa.int32()
        elif name in lgsr.FLOAT_COLUMNS:
            types[name] = pa.float64()
    return types


def _read_csv(path: Source, wanted: set[str], required: tuple[str, ...]) -> Iterator[pa.RecordBatch]:
    raw_names = _header(path)
    names = _normalised(raw_names)
    _check_required(path, names, required)
    keep = [n for n in names if n in wanted]
    old_header = [raw for raw, new in zip(raw_names, names, strict=True) if raw != new]
    read = pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=_BLOCK_SIZE)
    convert = pacsv.ConvertOptions(
        # Only an empty cell is missing: "NA" or "nan" must be reported as what they are.
        column_types=_column_types(keep), include_columns=keep, null_values=[""], strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    first_line = 2
    try:
        with open_stream(path) as stream:
            reader = pacsv.open_csv(stream, read_options=read, convert_options=convert)
            for batch in reader:
                batch = _normalise_codes(batch, bool(old_header))
                _validate_batch(path, batch, first_line)
                first_line += batch.num_rows
                yield batch
    except pa.ArrowInvalid as exc:
        raise _locate_csv_error(path, names, keep, exc) from None
    except (OSError, EOFError, pa.ArrowException) as exc:
        raise DataError(path, f"cannot be read: {exc}") from None


def _read_parquet(path: Source, wanted: set[str], required: tuple[str, ...]) -> Iterator[pa.RecordBatch]:
    try:
        source = open_file(path)
        file = pq.ParquetFile(source)
        raw_names = file.schema_arrow.names
        names = _normalised(raw_names)
        _check_required(path, names, required)
        keep_raw = [raw for raw, new in zip(raw_names, names, strict=True) if new in wanted]
        # Codes straight from the file's dictionary pages: casting plain strings to a dictionary costs ~10x more.
        text = [raw for raw, new, kind in zip(raw_names, names, file.schema_arrow.types, strict=True)
                if raw in keep_raw and new in lgsr.STRING_COLUMNS
                and (pa.types.is_string(kind) or pa.types.is_large_string(kind))]
        if text:
            file = pq.ParquetFile(source, metadata=file.metadata, read_dictionary=text)
    except DataError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise DataError(path, f"not a readable Parquet file ({exc})") from None
    types = _column_types(names)
    first_line = 1
    for batch in file.iter_batches(columns=keep_raw, batch_size=1 << 20):
        batch = batch.rename_columns(_normalised(batch.schema.names))
        arrays = []
        for name, col in zip(batch.schema.names, batch.columns, strict=True):
            try:
                arrays.append(col.cast(types[name]) if name in types else col)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise DataError(path, f"cannot be read as {types[name]}: {exc}", column=name) from None
        batch = pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)
        batch = _normalise_codes(batch, names != raw_names)
        _validate_batch(path, batch, first_line)
        first_line += batch.num_rows
        yield batch


def _normalise_codes(batch: pa.RecordBatch, old_header: bool) -> pa.RecordBatch:
    """Old downloads use other codes for the two renamed columns: map them onto the current ones."""
    if not old_header:
        return batch
    for name, mapping in lgsr.OLD_HEADER_CODES.items():
        if name not in batch.schema.names:
            continue
        i = batch.schema.get_field_index(name)
        col = batch.column(i)
        old = col.dictionary.to_pylist()
        new_dict = pa.array([mapping.get(v, v) for v in old], pa.string())
        batch = batch.set_column(i, name, pa.DictionaryArray.from_arrays(col.indices, new_dict))
    return batch


def _first_true(mask: pa.Array | np.ndarray) -> int | None:
    values = np.asarray(mask.to_numpy(zero_copy_only=False) if isinstance(mask, pa.Array) else mask)
    hits = np.flatnonzero(values)
    return int(hits[0]) if hits.size else None


def _validate_batch(path: Source, batch: pa.RecordBatch, first_line: int) -> None:
    names = batch.schema.names
    for name in names:
        col = batch.column(name)
        bad = _first_true(col.is_null())
        if bad is not None and name in (*lgsr.REQUIRED_FOR_SCORING, lgsr.LABEL, lgsr.SHOP_WEEK):
            raise DataError(path, "value is missing", line=first_line + bad, column=name)
    for name in (lgsr.QUANTITY, lgsr.SPEND):
        if name in names:
            values = batch.column(name).to_numpy(zero_copy_only=False)
            bad = _first_true(~np.isfinite(values))
            if bad is not None:
                raise DataError(path, f"{values[bad]!r} is not a finite number", line=first_line + bad, column=name)
    if lgsr.QUANTITY in names:
        qty = batch.column(lgsr.QUANTITY).to_numpy(zero_copy_only=False)
        bad = _first_true(qty <= 0)
        if bad is not None:
            raise DataError(path, f"quantity must be positive, got {qty[bad]:g}", line=first_line + bad,
                            column=lgsr.QUANTITY)
    if lgsr.SPEND in names:
        spend = batch.column(lgsr.SPEND).to_numpy(zero_copy_only=False)
        bad = _first_true(spend < 0)
        if bad is not None:
            raise DataError(path, f"spend must not be negative, got {spend[bad]:g}", line=first_line + bad,
                            column=lgsr.SPEND)
    if lgsr.LABEL in names:
        _check_codes(path, batch, lgsr.LABEL, first_line, allowed=set(LABELS))
    for name in lgsr.ID_COLUMNS:
        if name in names:
            _check_ids(path, batch, name, first_line)


def _check_codes(path: Source, batch: pa.RecordBatch, name: str, first_line: int, *, allowed: set[str]) -> None:
    col = batch.column(name)
    values = col.dictionary.to_pylist()
    bad_codes = [i for i, v in enumerate(values) if v not in allowed]
    if not bad_codes:
        return
    row = _first_true(pc.is_in(col.indices, pa.array(bad_codes, col.indices.type)))
    if row is None:  # unused dictionary entries
        return
    value = values[col.indices[row].as_py()]
    raise DataError(path, f"label {value!r} is not one of {', '.join(sorted(allowed))}",
                    line=first_line + row, column=name)


def _check_ids(path: Source, batch: pa.RecordBatch, name: str, first_line: int) -> None:
    col = batch.column(name)
    mangled = pc.match_substring_regex(col.dictionary, _SCIENTIFIC).to_numpy(zero_copy_only=False)
    if not mangled.any():
        return
    row = _first_true(pc.is_in(col.indices, pa.array(np.flatnonzero(mangled), col.indices.type)))
    if row is None:
        return
    value = col.dictionary[col.indices[row].as_py()].as_py()
    raise DataError(
        path,
        f"identifier {value!r} is in scientific notation: the file went through a spreadsheet, which "
        "rounded the IDs, so lines of different baskets now share one ID. Export the original file again "
        "with this column formatted as text",
        line=first_line + row,
        column=name,
    )


def _locate_csv_error(path: Source, names: list[str], keep: list[str], exc: Exception) -> DataError:
    """Arrow says *what* failed but not *where*: read the file again as text to find line and column."""
    numeric = [n for n in keep if n in lgsr.INTEGER_COLUMNS + lgsr.FLOAT_COLUMNS]
    read = pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=_BLOCK_SIZE)
    convert = pacsv.ConvertOptions(column_types=dict.fromkeys(numeric, pa.string()), include_columns=numeric)
    first_line = 2
    try:
        with open_stream(path) as stream:
            for batch in pacsv.open_csv(stream, read_options=read, convert_options=convert):
                for name in numeric:
                    pattern = _INTEGER if name in lgsr.INTEGER_COLUMNS else _NUMBER
                    ok = pc.match_substring_regex(batch.column(name), pattern).fill_null(False)
                    row = _first_true(pc.invert(ok))
                    if row is not None:
                        value = batch.column(name)[row].as_py()
                        kind = "a whole number" if name in lgsr.INTEGER_COLUMNS else "a number"
                        return DataError(path, f"{value!r} is not {kind}", line=first_line + row, column=name)
                first_line += batch.num_rows
    except pa.ArrowException as second:
        return DataError(path, f"malformed CSV: {second}")
    return DataError(path, f"malformed CSV: {exc}")
