"""Writing synthetic weeks: one file per week (gzip CSV or Parquet), weeks spread over worker processes."""

from __future__ import annotations

import datetime as dt
import io
import json
import multiprocessing
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from ...cpus import cpu_budget
from .. import lgsr as s
from .week import week_frame
from .world import World, build_world, shop_weeks, week_start

GZIP_LEVEL = 1  # fast; the real files use level 9, which readers cannot tell apart
FORMATS = ("csv.gz", "parquet")
CSV_SLICE_ROWS = 1 << 19  # lines turned into CSV text at a time: a week's text is never held whole
PARQUET_ROW_GROUP = 1 << 19  # lines per row group (readers stream a group at a time)
PARQUET_COMPRESSION = "zstd"


@dataclass(frozen=True)
class GenerateSummary:
    """What `generate` wrote."""

    out_dir: Path
    files: list[Path]
    lines: int
    baskets: int
    seconds: float


def write_csv_gz(frame: pl.DataFrame, path: Path) -> None:
    """CSV the way the real files are written (polars quotes only empty strings), gzip-compressed, a slice of
    lines at a time."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # wbits 31 = gzip container
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        for offset in range(0, max(frame.height, 1), CSV_SLICE_ROWS):
            text = io.BytesIO()
            frame.slice(offset, CSV_SLICE_ROWS).write_csv(text, include_header=offset == 0)  # bytes, no str
            fh.write(compressor.compress(text.getbuffer()))
        fh.write(compressor.flush())
    tmp.replace(path)  # a half-written week never looks like a finished file


def write_parquet(frame: pl.DataFrame, path: Path) -> None:
    """Parquet with the current header and the types `read_transactions` gives (codes and IDs as strings,
    whole numbers as int32), in row groups, zstd-compressed."""
    types = {**dict.fromkeys(s.STRING_COLUMNS, pl.String), **dict.fromkeys(s.INTEGER_COLUMNS, pl.Int32),
             **dict.fromkeys(s.FLOAT_COLUMNS, pl.Float64)}
    frame = frame.cast({name: kind for name, kind in types.items() if name in frame.columns})
    tmp = path.with_suffix(".tmp")
    frame.write_parquet(tmp, compression=PARQUET_COMPRESSION, row_group_size=PARQUET_ROW_GROUP)
    tmp.replace(path)


WRITERS = {"csv.gz": write_csv_gz, "parquet": write_parquet}


def write_time_file(out_dir: Path, weeks: list[int]) -> Path:
    """`time.csv.gz`: shop_week, date_from, date_to (Monday..Sunday), as the real one."""
    starts = [week_start(w) for w in weeks]
    frame = pl.DataFrame({
        "shop_week": weeks,
        "date_from": [int(d.strftime("%Y%m%d")) for d in starts],
        "date_to": [int((d + dt.timedelta(days=6)).strftime("%Y%m%d")) for d in starts],
    })  # fmt: skip
    path = out_dir / "time.csv.gz"
    write_csv_gz(frame, path)
    return path


_WORKER_WORLD: World | None = None


def _init_worker(world: World) -> None:
    global _WORKER_WORLD
    _WORKER_WORLD = world


Job = tuple[int, int, int, str, str]  # shop week, week number, seed, folder, format


def _write_week(job: Job) -> tuple[str, int, int]:
    shop_week, week_number, seed, out_dir, fmt = job
    assert _WORKER_WORLD is not None
    frame = week_frame(_WORKER_WORLD, shop_week, week_number, seed)
    path = Path(out_dir) / f"transactions_{shop_week}.{fmt}"
    WRITERS[fmt](frame, path)
    return str(path), frame.height, int(frame[s.BASKET_ID].n_unique())


def _run_jobs(world: World, jobs: list[Job], workers: int) -> Iterator[tuple[str, int, int]]:
    if workers <= 1:
        _init_worker(world)
        yield from map(_write_week, jobs)
        return
    # spawn, not fork: forking after polars has started its thread pool can deadlock the children
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(world,)) as pool:
        yield from pool.map(_write_week, jobs)


def _default_workers(customers: int, weeks: int) -> int:
    """One process per core, unless the run is so small (under ~5 M lines) that starting them costs more."""
    return 1 if customers * weeks < 800_000 else cpu_budget()


MANIFEST = "generate.json"  # the parameters a folder was written with: what `resume` must match


def _manifest(out_dir: Path, settings: dict[str, object], resume: bool) -> None:
    """Record the settings; with `resume`, first refuse a folder written with other ones (its finished weeks
    would not be the weeks these settings give)."""
    path = out_dir / MANIFEST
    if resume and path.exists():
        try:
            before = json.loads(path.read_text())
        except ValueError:
            before = None
        if before != settings:
            raise ValueError(f"{path} records other settings ({before}); resume only with the same ones "
                             f"({settings}) or write to a new folder")
    path.write_text(json.dumps(settings, sort_keys=True) + "\n")


def generate(out_dir: Path, *, weeks: int, customers: int, seed: int, start_week: int = 200607,
             products: int | None = None, stores: int | None = None,
             progress: Callable[[str], None] | None = None, workers: int | None = None,
             fmt: str = "csv.gz", resume: bool = False) -> GenerateSummary:  # fmt: skip
    """Write `weeks` consecutive synthetic weeks from `start_week` into `out_dir` as `transactions_YYYYWW.<fmt>`
    (`fmt` in FORMATS), plus `time.csv.gz`.

    Deterministic in `seed` (neither the worker count nor the format changes the lines). `workers` defaults to
    the number of CPUs (1 for small runs); each worker builds and writes one week at a time, so memory is
    bounded by the customers (the world every worker holds) and one week's lines per worker, whatever the
    number of weeks. `resume` keeps the weeks a stopped run with the same settings finished (a week's file
    appears only once complete) and writes the rest; the summary counts the lines written now.
    """
    started = time.perf_counter()
    if weeks < 1:
        raise ValueError("weeks must be at least 1")
    if fmt not in WRITERS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    week_list = shop_weeks(start_week, weeks)
    _manifest(out_dir, {"weeks": weeks, "customers": customers, "seed": seed, "start_week": start_week,
                        "products": products, "stores": stores, "format": fmt}, resume)
    world = build_world(customers=customers, seed=seed, weeks=weeks, products=products, stores=stores)
    jobs = [(w, i, seed, str(out_dir), fmt) for i, w in enumerate(week_list)]
    done = [job for job in jobs if resume and (out_dir / f"transactions_{job[0]}.{fmt}").exists()]
    if done and progress is not None:
        progress(f"resuming: {len(done)} of {len(jobs)} weeks are already written")
    jobs = [job for job in jobs if job not in done]
    files, lines, baskets = [out_dir / f"transactions_{job[0]}.{fmt}" for job in done], 0, 0
    n_workers = max(1, min(workers or _default_workers(customers, weeks), len(jobs)))
    for path, n_lines, n_baskets in _run_jobs(world, jobs, n_workers):
        files.append(Path(path))
        lines, baskets = lines + n_lines, baskets + n_baskets
        if progress is not None:
            progress(f"{Path(path).name}: {n_lines:,} lines, {n_baskets:,} baskets")
    files.append(write_time_file(out_dir, week_list))
    return GenerateSummary(out_dir, files, lines, baskets, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    """`python -m retail_prediction.data.synthetic --out DIR --weeks N --customers M --seed S` (the CLI proper is
    `retail-prediction generate`)."""
    import argparse

    parser = argparse.ArgumentParser(description="Write synthetic LGSR transaction weeks.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--weeks", type=int, required=True)
    parser.add_argument("--customers", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start-week", type=int, default=200607)
    parser.add_argument("--products", type=int)
    parser.add_argument("--stores", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--format", choices=FORMATS, default="csv.gz")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    summary = generate(
        args.out, weeks=args.weeks, customers=args.customers, seed=args.seed, start_week=args.start_week,
        products=args.products, stores=args.stores, workers=args.workers, progress=print, fmt=args.format,
        resume=args.resume,
    )  # fmt: skip
    rate = summary.lines / summary.seconds
    print(f"{summary.lines:,} lines, {summary.baskets:,} baskets in {summary.seconds:.1f} s ({rate:,.0f} lines/s)")
