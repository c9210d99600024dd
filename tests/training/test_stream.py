"""Streamed training: the tables over chunks equal the in-memory computation on the same lines, the latent
estimation over chunks equals the in-memory one, results do not depend on chunking or on the order files
are listed, a basket across files is refused, and peak memory does not grow with the lines."""

from __future__ import annotations

import gzip
import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import Weeks
from retail_prediction.contract import LABELS
from retail_prediction.data import lgsr
from retail_prediction.data.baskets import table_to_baskets
from retail_prediction.data.reading import DataError, read_transactions
from retail_prediction.features.fitting import fit_tables
from retail_prediction.features.latent_fit import EMChunk, estimate, estimate_chunks, mix
from retail_prediction.training import accumulate
from retail_prediction.training.spill import KeyLedger, Spill, basket_keys, quantile_of_counts
from retail_prediction.training.stream import TRAIN_COLUMNS, StandIns, spill_files
from retail_prediction.training.train import ordered_files

SEED, FOLDS = 0, 5


def _spilled(files: list[Path], folder: Path, threads: int = 2):
    folder.mkdir()
    return spill_files(files, Spill(folder), None, threads, lambda _: None)


def _classes(spilled) -> tuple[str, ...]:
    return tuple(LABELS[i] for i in sorted(spilled.labels))


def _learned(files: list[Path], folder: Path, threads: int = 2):
    spilled = _spilled(files, folder, threads)
    p = accumulate.part(spilled, None, _classes(spilled), FOLDS, SEED, threads)
    return p, accumulate.learn(p, _classes(spilled), 2.0, 1.0)


def test_quantiles_from_value_counts_equal_numpys() -> None:
    rng = np.random.default_rng(1)
    data = np.round(rng.lognormal(size=20_001), 2)  # many repeated values, as unit prices are
    q = np.linspace(0, 1, 33)[1:-1]
    values, counts = np.unique(data, return_counts=True)
    np.testing.assert_array_equal(quantile_of_counts(values, counts, q), np.quantile(data, q))
    one = data[:1]
    np.testing.assert_array_equal(quantile_of_counts(one, np.array([3]), q), np.quantile(np.repeat(one, 3), q))


def test_streamed_tables_equal_the_in_memory_ones(weeks: Weeks, tmp_path: Path) -> None:
    _, learned = _learned(weeks.train, tmp_path / "spill")
    baskets = table_to_baskets(read_transactions(weeks.train, columns=TRAIN_COLUMNS))
    classes = learned.tables.classes
    y = np.searchsorted(np.asarray(classes), baskets.label)
    keys = basket_keys(baskets.basket_ids)
    fold = (mix(keys, SEED ^ accumulate._FOLD_SALT) % np.uint64(FOLDS)).astype(np.int16)
    tables, folds = fit_tables(baskets.lines, y, classes, hierarchy_names=lgsr.HIERARCHY, n_folds=FOLDS,
                               seed=SEED, basket_fold=fold)
    streamed = learned.tables
    np.testing.assert_array_equal(streamed.price_edges, tables.price_edges)  # exact quantiles
    np.testing.assert_array_equal(streamed.prior, tables.prior)
    np.testing.assert_allclose(streamed.price_counts, tables.price_counts, rtol=1e-12)
    for a, b in zip(streamed.levels, tables.levels, strict=True):
        np.testing.assert_array_equal(a.vocab, b.vocab)
        np.testing.assert_allclose(a.counts, b.counts, rtol=1e-12, atol=1e-15)
    assert folds is not None and learned.folds is not None
    for a, b in zip(learned.folds.level_counts, folds.level_counts, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(learned.folds.price_counts, folds.price_counts, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(learned.folds.prior, folds.prior)
    # Latent classes: the same products, posteriors of the same estimation (the stand-in lines and the
    # composition model's sample may differ from the in-memory numbering, so close, not equal).
    assert streamed.latent is not None and tables.latent is not None
    np.testing.assert_array_equal(streamed.latent.lines, tables.latent.lines)
    agree = (streamed.latent.posterior.argmax(axis=1) == tables.latent.posterior.argmax(axis=1)).mean()
    assert agree > 0.97


def _em_problem() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    n_products, k = 60, 3
    true = np.arange(n_products) % k
    size = rng.integers(1, 5, 4000)
    basket = np.repeat(np.arange(size.size), size)
    product = rng.integers(0, n_products, basket.size)
    votes = np.stack([np.bincount(basket, weights=true[product] == c) for c in range(k)], axis=1)
    label = votes.argmax(axis=1)
    n = np.bincount(basket)
    counts = np.zeros((n_products, k))
    np.add.at(counts, (product, label[basket]), 1.0 / n[basket] ** 2)
    start = (counts + 1) / (counts + 1).sum(axis=1, keepdims=True)
    return product, basket, label, start, np.full((n_products, k), 1 / k)


@pytest.mark.parametrize("n_chunks", [2, 7])
def test_the_estimation_over_chunks_equals_the_in_memory_one(n_chunks: int) -> None:
    product, basket, label, start, prior = _em_problem()
    whole = estimate(product, basket, label, label.size, start, prior)
    cuts = np.linspace(0, label.size, n_chunks + 1).astype(int)
    chunks = []
    for lo, hi in itertools.pairwise(cuts):
        lines = (basket >= lo) & (basket < hi)
        chunks.append(EMChunk(product[lines], basket[lines] - lo, label[lo:hi], np.arange(lo, hi, dtype=np.uint64)))
    loaders = [lambda c=c: c for c in chunks]
    parts = estimate_chunks(lambda: loaders, start, prior, pool=lambda fn, items: map(fn, reversed(list(items))))
    for a, b in zip(parts, whole, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def _merge(files: list[Path], out: Path) -> Path:
    """The lines of several weekly files in one file: the same lines, chunked differently."""
    with gzip.open(out, "wt") as dst:
        for n, f in enumerate(files):
            with gzip.open(f, "rt") as src:
                header = src.readline()
                if n == 0:
                    dst.write(header)
                dst.write(src.read())
    return out


def test_results_do_not_depend_on_chunking_or_file_order(weeks: Weeks, tmp_path: Path) -> None:
    """Weekly files, the same lines in two files, or the weekly files listed backwards: the same tables, the
    same sampled baskets and the same features, to the last bit (chunks are per week, files taken by name)."""
    files = weeks.train
    merged = [_merge(files[:4], tmp_path / "a.csv.gz"), _merge(files[4:], tmp_path / "b.csv.gz")]
    runs = []
    for name, listed, threads in (("weekly", files, 2), ("merged", merged, 1), ("backwards", files[::-1], 2)):
        p, learned = _learned(ordered_files(listed), tmp_path / name, threads)
        x, y, n = accumulate.features(p, learned, 3000, out_of_fold=True)
        runs.append((learned, x, y, n))
    base = runs[0]
    assert base[3] > 3000 == base[1].shape[0]  # a sample, bounded
    for learned, x, y, n in runs[1:]:
        for a, b in zip(learned.tables.levels, base[0].tables.levels, strict=True):
            np.testing.assert_array_equal(a.counts, b.counts)
        np.testing.assert_array_equal(learned.tables.latent.posterior, base[0].tables.latent.posterior)
        np.testing.assert_array_equal(y, base[2])  # the same sampled baskets, in the same order
        assert n == base[3]
        np.testing.assert_array_equal(x, base[1])


def test_a_basket_with_lines_in_two_files_is_refused(tmp_path: Path) -> None:
    header = ",".join(lgsr.REQUIRED_FOR_TRAINING)
    first, second = tmp_path / "w1.csv", tmp_path / "w2.csv"
    first.write_text(f"{header}\n200607,1,1.5,PRD1,B1,MM\n200607,1,2.5,PRD2,B2,LA\n")
    second.write_text(f"{header}\n200608,1,1.5,PRD1,B3,MM\n200608,2,3.0,PRD3,B1,MM\n")
    with pytest.raises(DataError, match=r"w2\.csv.*basket B1 also has lines in .*w1\.csv"):
        _spilled([first, second], tmp_path / "spill")


_PEAK = textwrap.dedent("""
    import sys, tempfile
    from pathlib import Path
    import numpy as np
    from retail_prediction.contract import LABELS
    from retail_prediction.data import lgsr
    from retail_prediction.data.baskets import table_to_baskets
    from retail_prediction.data.reading import read_transactions
    from retail_prediction.features.fitting import fit_tables
    from retail_prediction.training import accumulate
    from retail_prediction.training.spill import Spill
    from retail_prediction.data.reading import resolve_files
    from retail_prediction.training.stream import TRAIN_COLUMNS, spill_files

    files = resolve_files(sys.argv[2])
    if sys.argv[1] == "streamed":
        with tempfile.TemporaryDirectory() as tmp:
            spilled = spill_files(files, Spill(Path(tmp)), None, 2, lambda _: None)
            classes = tuple(LABELS[i] for i in sorted(spilled.labels))
            p = accumulate.part(spilled, None, classes, 2, 0, 2)
            accumulate.features(p, accumulate.learn(p, classes, 2.0, 1.0), 2000, out_of_fold=True)
    else:
        baskets = table_to_baskets(read_transactions(files, columns=TRAIN_COLUMNS))
        classes = tuple(np.unique(baskets.label).tolist())
        fit_tables(baskets.lines, np.searchsorted(classes, baskets.label), classes, hierarchy_names=lgsr.HIERARCHY,
                   n_folds=2)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    print(int(status["VmHWM"].split()[0]))
""")


def test_peak_memory_does_not_grow_with_the_lines(tmp_path: Path) -> None:
    """Three times the weeks, three times the lines: the in-memory tables' peak grows with them, streamed
    training's passes (tables, latent classes, features) stay the same within a margin (peak RSS of a fresh
    process, /proc/self/status VmHWM)."""
    from retail_prediction.data.synthetic import generate

    peaks: dict[str, list[float]] = {"streamed": [], "in_memory": []}
    for n_weeks in (4, 12):
        folder = tmp_path / f"w{n_weeks}"
        generate(folder, weeks=n_weeks, customers=9000, seed=5, start_week=200607)
        for mode, found in peaks.items():
            # glibc's per-thread arenas alone move a threaded process's peak by 10-25 MB from run to run
            out = subprocess.run([sys.executable, "-c", _PEAK, mode, str(folder)], capture_output=True, text=True,
                                 timeout=120, check=True, env={**os.environ, "MALLOC_ARENA_MAX": "2"})
            found.append(int(out.stdout.split()[-1]) / 1e3)  # MB
    grown = {mode: found[1] - found[0] for mode, found in peaks.items()}
    assert grown["in_memory"] > 60, peaks  # the extra ~400,000 lines, held at once
    assert grown["streamed"] < grown["in_memory"] / 3, peaks


def test_a_memory_budget_bounds_the_samples_or_is_refused(weeks: Weeks, tmp_path: Path) -> None:
    from retail_prediction.training.budget import limits

    spilled = _spilled(weeks.train[:2], tmp_path / "spill")
    roomy = limits(spilled, 10, 2, 6.0, 2_000_000, 1_000_000)
    assert (roomy.model_baskets, roomy.validation_baskets, roomy.notes) == (2_000_000, 1_000_000, [])
    tight = limits(spilled, 10, 2, 1.0, 2_000_000, 1_000_000)
    assert 10_000 <= tight.model_baskets < 2_000_000 and "at most" in tight.notes[0]
    with pytest.raises(MemoryError, match=r"memory budget of 0.6 GB is too small.*raise --memory-budget"):
        limits(spilled, 10, 2, 0.6, 2_000_000, 1_000_000)


def test_a_basket_with_two_labels_is_refused_naming_its_file(tmp_path: Path) -> None:
    week = tmp_path / "w1.csv"
    week.write_text(f"{','.join(lgsr.REQUIRED_FOR_TRAINING)}\n200607,1,1.5,PRD1,B1,MM\n200607,1,2.5,PRD2,B1,LA\n")
    with pytest.raises(DataError, match=r"w1\.csv, column BASKET_PRICE_SENSITIVITY: basket B1 has lines with"):
        _spilled([week], tmp_path / "spill")


def test_a_products_stand_in_is_the_first_line_of_its_lowest_keyed_basket() -> None:
    """The definition, checked line by line over two updates (as two files), with lines of no product."""
    rng = np.random.default_rng(3)
    updates = []
    for _ in range(2):
        n = 400
        product = rng.integers(-1, 30, n).astype(np.int32)
        rows = np.stack([product, *rng.integers(0, 5, (len(lgsr.HIERARCHY), n)).astype(np.int32)])
        key = rng.integers(0, 50, n).astype(np.uint64)  # few keys: many ties between lines of one basket
        updates.append((rows, key, rng.random(n), rng.random(n)))
    stand_ins = StandIns()
    for rows, key, spend, quantity in updates:
        stand_ins.update(rows, key, spend, quantity, 30)
    for p in range(30):
        candidates = [(int(key[i]), u, i) for u, (rows, key, _, _) in enumerate(updates)
                      for i in np.flatnonzero(rows[0] == p)]
        _, u, i = min(candidates)  # lowest key, then the earlier file, then the earlier line
        rows, key, spend, quantity = updates[u]
        assert (stand_ins.key[p], stand_ins.spend[p], stand_ins.quantity[p]) == (key[i], spend[i], quantity[i])
        assert (stand_ins.hierarchy[:, p] == rows[1:, i]).all()


def test_the_key_ledger_finds_keys_of_two_files_in_any_bucket(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    files = [rng.integers(0, 2**64 - 1, 5000, dtype=np.uint64, endpoint=True) for _ in range(3)]
    files[2][[7, 4000]] = files[0][[9, 3]]  # two baskets of file 0 again in file 2
    files[1][11] = files[1][12]  # a repeat within one file is not a basket spanning two
    ledger = KeyLedger(tmp_path)
    for i, keys in enumerate(files):
        ledger.add(keys, i)
    assert sorted(ledger.repeated()) == sorted([(int(files[0][9]), 0, 2), (int(files[0][3]), 0, 2)])
    assert len(list((tmp_path / "keys").iterdir())) == KeyLedger.BUCKETS  # spread over every bucket
