"""The synthetic generator: file format identical to the real LGSR files, distributions close to them."""

from __future__ import annotations

import datetime as dt
import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from conftest import LGSR
from retail_prediction.contract import LABELS
from retail_prediction.data import lgsr as s
from retail_prediction.data.reading import read_transactions
from retail_prediction.data.synthetic import generate, label_from_counts, load_calibration, shop_weeks, week_start
from retail_prediction.data.synthetic.write import PARQUET_COMPRESSION, PARQUET_ROW_GROUP

REAL_DIR = LGSR
# Format and distribution comparisons with the real weeks: run when they are present (see tests/conftest.py).
needs_real = pytest.mark.real_data
WEEKS, CUSTOMERS, SEED = 6, 2000, 11


def read_lines(folder: Path) -> pl.DataFrame:
    """All weeks of a folder, codes and IDs as strings ("" where the file has `""`)."""
    overrides = {c: pl.String for c in s.STRING_COLUMNS}
    frames = [pl.read_csv(f, schema_overrides=overrides) for f in sorted(folder.glob("transactions_*.csv.gz"))]
    return pl.concat(frames).with_columns(pl.col(s.STRING_COLUMNS).fill_null(""))


def baskets(lines: pl.DataFrame) -> pl.DataFrame:
    return lines.group_by(s.BASKET_ID).agg(
        pl.len().alias("n"), pl.col(s.LABEL).first(), pl.col(s.CUST_CODE).first(), pl.col(s.STORE_FORMAT).first()
    )


@pytest.fixture(scope="module")
def syn_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    summary = generate(out, weeks=WEEKS, customers=CUSTOMERS, seed=SEED)
    assert len(summary.files) == WEEKS + 1 and summary.lines > 0 and summary.baskets > 0
    return out


@pytest.fixture(scope="module")
def syn(syn_dir: Path) -> pl.DataFrame:
    return read_lines(syn_dir)


@pytest.fixture(scope="module")
def real(lgsr: Path) -> pl.DataFrame:
    return read_lines(lgsr)


def first_lines(path: Path, count: int = 1) -> list[str]:
    with gzip.open(path, "rt", newline="") as fh:
        return [fh.readline() for _ in range(count)]


# ---------------------------------------------------------------- format


@needs_real
def test_header_and_column_order_match_a_real_file(syn_dir: Path) -> None:
    real_header = first_lines(REAL_DIR / "transactions_200607.csv.gz")[0]
    assert first_lines(syn_dir / "transactions_200607.csv.gz")[0] == real_header
    assert real_header.rstrip("\n").split(",") == list(s.ALL_COLUMNS)
    assert first_lines(syn_dir / "time.csv.gz")[0] == first_lines(REAL_DIR / "time.csv.gz")[0]


def test_raw_text_follows_the_real_quoting(syn_dir: Path) -> None:
    text = gzip.decompress((syn_dir / "transactions_200609.csv.gz").read_bytes()).decode()
    assert "\r" not in text and text.endswith("\n")
    rows = text.splitlines()[1:]
    anonymous = [r for r in rows if ',"","","",' in r]
    assert anonymous, 'anonymous baskets write CUST_CODE, seg_1 and seg_2 as ""'
    assert all(r.replace('""', "").count('"') == 0 for r in rows), "only empty codes are quoted"
    spend = [r.split(",")[5] for r in rows]
    assert all(re.fullmatch(r"\d+\.\d{1,2}", v) for v in spend), "SPEND like 1.3, 14.76 or 2.0"


def test_ids_and_codes_have_the_real_shapes(syn: pl.DataFrame) -> None:
    shapes = {
        s.PROD_CODE: r"PRD09\d{5}", s.PROD_CODE_10: r"CL00\d{3}", s.PROD_CODE_20: r"DEP00\d{3}",
        s.PROD_CODE_30: r"G00\d{3}", s.PROD_CODE_40: r"D0000\d", s.CUST_CODE: r"(CUST00\d{8})?",
        s.BASKET_ID: r"\d{15}", s.STORE_CODE: r"STORE\d{5}", s.BASKET_SIZE: "[SML]",
        s.LABEL: "LA|MM|UM|XX", s.STORE_FORMAT: "LS|MS|SS|XLS", s.STORE_REGION: "[ENSW]0[1-3]",
        s.CUST_PRICE_SENSITIVITY: "(AZ|CT|BG|DY)?", s.CUST_LIFESTAGE: "(CZ|EQ|BU|FN|AT|DI)?",
        s.BASKET_TYPE: "Small Shop|Top Up|Full Shop|XX", s.BASKET_DOMINANT_MISSION: "Fresh|Grocery|Mixed|Nonfood|XX",
    }  # fmt: skip
    for column, pattern in shapes.items():
        bad = syn.filter(~pl.col(column).str.contains(f"^(?:{pattern})$"))
        assert bad.is_empty(), f"{column}: {bad[column].head(3).to_list()}"
    anonymous = syn.filter(pl.col(s.CUST_CODE) == "")
    assert (anonymous[s.CUST_PRICE_SENSITIVITY] == "").all()
    assert (syn.filter(pl.col(s.CUST_CODE) != "")[s.CUST_PRICE_SENSITIVITY] != "").all()


def test_calendar_is_the_real_shop_calendar(syn: pl.DataFrame) -> None:
    assert week_start(200607) == dt.date(2006, 4, 10)
    assert week_start(200701) == dt.date(2007, 2, 26) and week_start(200801) == dt.date(2008, 2, 25)
    assert shop_weeks(200751, 3) == [200751, 200752, 200801]
    if (REAL_DIR / "time.csv.gz").exists():
        real_time = pl.read_csv(REAL_DIR / "time.csv.gz")
        ours = [int(week_start(w).strftime("%Y%m%d")) for w in real_time["shop_week"]]
        assert ours == real_time["date_from"].to_list()
    dates = syn.select(s.SHOP_WEEK, s.SHOP_DATE, s.SHOP_WEEKDAY).unique()
    for week, date, weekday in dates.iter_rows():
        day = dt.datetime.strptime(str(date), "%Y%m%d").date()
        assert weekday == (day.weekday() + 1) % 7 + 1, "SHOP_WEEKDAY: 1 = Sunday ... 7 = Saturday"
        assert 0 <= (day - week_start(week)).days < 7


# ---------------------------------------------------------------- consistency


def test_every_basket_is_one_visit(syn: pl.DataFrame) -> None:
    per_basket = [
        s.LABEL, s.STORE_CODE, s.CUST_CODE, s.SHOP_DATE, s.SHOP_HOUR, s.BASKET_SIZE, s.BASKET_TYPE,
        s.BASKET_DOMINANT_MISSION, s.SHOP_WEEK,
    ]  # fmt: skip
    counts = syn.group_by(s.BASKET_ID).agg(
        *[pl.col(c).n_unique() for c in per_basket], pl.col(s.PROD_CODE).n_unique().alias("products"), pl.len()
    )
    assert (counts.select(per_basket).max_horizontal() == 1).all()
    assert (counts["products"] == counts["len"]).all(), "a product appears once per basket"
    basket_type_xx = syn.filter(pl.col(s.BASKET_TYPE) == "XX")[s.BASKET_DOMINANT_MISSION]
    assert (basket_type_xx == "XX").all()


def test_fixed_attributes_never_change(syn: pl.DataFrame) -> None:
    fixed = {
        s.PROD_CODE: list(s.HIERARCHY), s.CUST_CODE: [s.CUST_PRICE_SENSITIVITY, s.CUST_LIFESTAGE],
        s.STORE_CODE: [s.STORE_FORMAT, s.STORE_REGION],
    }  # fmt: skip
    for key, columns in fixed.items():
        sub = syn.filter(pl.col(key) != "").group_by(key).agg(*[pl.col(c).n_unique() for c in columns])
        assert (sub.select(columns).max_horizontal() == 1).all(), key
    for child, parent in zip(s.HIERARCHY, s.HIERARCHY[1:], strict=False):
        assert syn.group_by(child).agg(pl.col(parent).n_unique())[parent].max() == 1, f"{child} in {parent}"


def test_spend_is_unit_price_times_quantity(syn: pl.DataFrame) -> None:
    assert (syn[s.QUANTITY] >= 1).all() and (syn[s.SPEND] > 0).all()
    cents = (syn[s.SPEND] * 100).round(6)
    assert (cents == cents.round(0)).all()
    unit = syn.with_columns(u=pl.col(s.SPEND) / pl.col(s.QUANTITY))
    stable = unit.group_by(s.PROD_CODE).agg((pl.col("u") == pl.col("u").mode().first()).mean().alias("same"))
    assert stable["same"].mean() > 0.8, "a product keeps its usual price on most lines"


def test_label_follows_the_product_class_mechanism(syn: pl.DataFrame) -> None:
    single = syn.filter(pl.len().over(s.BASKET_ID) == 1)
    classes = single.group_by(s.PROD_CODE).agg(pl.col(s.LABEL).n_unique().alias("k"), pl.col(s.LABEL).first())
    assert classes["k"].max() == 1, "a product's single-line baskets always carry its class"
    joined = syn.join(classes.select(s.PROD_CODE, pl.col(s.LABEL).alias("pclass")), on=s.PROD_CODE, how="left")
    known = joined.group_by(s.BASKET_ID).agg(
        pl.col(s.LABEL).first(), pl.col("pclass").is_null().sum().alias("unknown"),
        *[(pl.col("pclass") == c).sum().alias(c) for c in LABELS],
    ).filter(pl.col("unknown") == 0)  # fmt: skip
    predicted = label_from_counts(known.select(LABELS).to_numpy(), load_calibration()["label_thresholds"])
    assert known.height > 1000
    assert (np.asarray(LABELS)[predicted] == known[s.LABEL].to_numpy()).all()


def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    one, two, other = tmp_path / "one", tmp_path / "two", tmp_path / "other"
    generate(one, weeks=2, customers=300, seed=5, start_week=200751, workers=1)
    generate(two, weeks=2, customers=300, seed=5, start_week=200751, workers=2)
    names = sorted(p.name for p in one.iterdir())
    assert names == ["generate.json", "time.csv.gz", "transactions_200751.csv.gz", "transactions_200752.csv.gz"]
    assert all((one / n).read_bytes() == (two / n).read_bytes() for n in names)
    generate(other, weeks=2, customers=300, seed=6, start_week=200751)
    assert (other / names[2]).read_bytes() != (one / names[2]).read_bytes()


def test_resume_writes_only_the_missing_weeks_and_refuses_other_settings(tmp_path: Path) -> None:
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    generate(whole, weeks=3, customers=300, seed=5, start_week=200751, workers=1)
    generate(stopped, weeks=3, customers=300, seed=5, start_week=200751, workers=1)
    (stopped / "transactions_200801.csv.gz").unlink()  # as if stopped before the last week was finished
    kept = (stopped / "transactions_200751.csv.gz").stat().st_mtime_ns
    said: list[str] = []
    summary = generate(stopped, weeks=3, customers=300, seed=5, start_week=200751, workers=1, resume=True,
                       progress=said.append)
    assert said[0] == "resuming: 2 of 3 weeks are already written" and len(said) == 2
    assert (stopped / "transactions_200751.csv.gz").stat().st_mtime_ns == kept  # not rewritten
    assert len(summary.files) == 4 and summary.lines > 0
    assert all((whole / n).read_bytes() == (stopped / n).read_bytes() for n in os.listdir(whole))
    cli = [sys.executable, "-m", "retail_prediction.cli", "generate", "--out", str(stopped), "--weeks", "3",
           "--customers", "300", "--seed", "6", "--start-week", "200751", "--resume"]
    refused = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "records other settings" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr


# ---------------------------------------------------------------- distributions against the real weeks


@needs_real
def test_label_mix_within_3_points(syn: pl.DataFrame, real: pl.DataFrame) -> None:
    ours, theirs = baskets(syn)[s.LABEL], baskets(real)[s.LABEL]
    for label in LABELS:
        assert abs((ours == label).mean() - (theirs == label).mean()) <= 0.03, label


@needs_real
def test_lines_per_basket(syn: pl.DataFrame, real: pl.DataFrame) -> None:
    ours, theirs = baskets(syn)["n"], baskets(real)["n"]
    assert abs(ours.mean() / theirs.mean() - 1) <= 0.15
    assert abs(ours.median() - theirs.median()) <= 1


@needs_real
def test_quantity_and_spend(syn: pl.DataFrame, real: pl.DataFrame) -> None:
    assert abs(syn[s.QUANTITY].mean() / real[s.QUANTITY].mean() - 1) <= 0.15
    assert abs((syn[s.QUANTITY] == 1).mean() - (real[s.QUANTITY] == 1).mean()) <= 0.05
    assert abs(syn[s.SPEND].median() / real[s.SPEND].median() - 1) <= 0.20


@needs_real
def test_store_formats_and_anonymous_baskets(syn: pl.DataFrame, real: pl.DataFrame) -> None:
    ours, theirs = baskets(syn), baskets(real)
    for fmt in ("LS", "MS", "SS", "XLS"):
        gap = (ours[s.STORE_FORMAT] == fmt).mean() - (theirs[s.STORE_FORMAT] == fmt).mean()
        assert abs(gap) <= 0.05, fmt
    assert abs((ours[s.CUST_CODE] == "").mean() - (theirs[s.CUST_CODE] == "").mean()) <= 0.05


@needs_real
def test_weekly_volume_scales_with_customers(syn: pl.DataFrame, real: pl.DataFrame) -> None:
    customers = real.filter(pl.col(s.CUST_CODE) != "")[s.CUST_CODE].n_unique()
    real_rate = baskets(real).height / real[s.SHOP_WEEK].n_unique() / customers
    ours = baskets(syn).height / WEEKS / CUSTOMERS
    assert abs(ours / real_rate - 1) <= 0.15


@needs_real
def test_the_project_loader_reads_synthetic_and_real_files_alike(syn_dir: Path) -> None:
    ours = read_transactions(syn_dir / "transactions_200607.csv.gz")
    theirs = read_transactions(REAL_DIR / "transactions_200607.csv.gz")
    assert ours.schema == theirs.schema


# ---------------------------------------------------------------- Parquet


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic-parquet")
    generate(out, weeks=WEEKS, customers=CUSTOMERS, seed=SEED, fmt="parquet")
    return out


def test_parquet_weeks_hold_the_csv_weeks_lines(syn_dir: Path, parquet_dir: Path) -> None:
    csv_names = sorted(p.name.replace(".csv.gz", ".parquet") for p in syn_dir.glob("transactions_*"))
    assert sorted(p.name for p in parquet_dir.glob("transactions_*")) == csv_names
    assert (parquet_dir / "time.csv.gz").read_bytes() == (syn_dir / "time.csv.gz").read_bytes()
    assert read_transactions(parquet_dir).equals(read_transactions(syn_dir))
    meta = pq.ParquetFile(parquet_dir / "transactions_200607.parquet").metadata
    assert meta.row_group(0).column(0).compression == PARQUET_COMPRESSION.upper()
    assert meta.num_row_groups == -(-meta.num_rows // PARQUET_ROW_GROUP)


def test_parquet_with_the_old_header_reads_as_the_current_one(parquet_dir: Path, tmp_path: Path) -> None:
    current = parquet_dir / "transactions_200608.parquet"
    frame = pl.read_parquet(current)
    old_codes = {col: {new: old for old, new in codes.items()} for col, codes in s.OLD_HEADER_CODES.items()}
    old = frame.with_columns(pl.col(col).replace(codes) for col, codes in old_codes.items()).rename(
        {s.CUST_PRICE_SENSITIVITY: "CUST_PRICE_SENSITIVITY", s.CUST_LIFESTAGE: "CUST_LIFESTAGE"})
    assert set(old["CUST_PRICE_SENSITIVITY"].unique()) - {""} <= {"LA", "MM", "UM", "XX"}
    old.write_parquet(tmp_path / "transactions_200608.parquet")
    ours, theirs = read_transactions(tmp_path / "transactions_200608.parquet"), read_transactions(current)
    assert ours.column_names == theirs.column_names
    for col in ours.column_names:
        assert ours.column(col).to_pylist() == theirs.column(col).to_pylist(), col


def test_generate_cli_writes_parquet_and_refuses_an_unknown_format(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "retail_prediction.cli", "generate", "--out", str(tmp_path), "--weeks", "2",
           "--customers", "300"]
    done = subprocess.run([*cli, "--format", "parquet"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generate.json", "time.csv.gz",
                                                          "transactions_200607.parquet", "transactions_200608.parquet"]
    refused = subprocess.run([*cli, "--format", "csv.bz2"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "invalid choice: 'csv.bz2'" in refused.stderr
