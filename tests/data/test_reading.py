"""Reading transaction files: formats, header variants, and clear refusals of bad files."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from conftest import LGSR_VARIANTS, Weeks
from retail_prediction.contract import LABELS
from retail_prediction.data import lgsr
from retail_prediction.data.baskets import table_to_baskets
from retail_prediction.data.reading import DataError, read_transactions, resolve_files


def _lines(path: Path) -> list[str]:
    with gzip.open(path, "rt") as f:
        return f.read().splitlines()


def _write(path: Path, lines: list[str]) -> Path:
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write("\n".join(lines) + "\n")
    else:
        path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def week(weeks: Weeks) -> Path:
    return weeks.folder / "transactions_200607.csv.gz"


def _check_ids_are_strings(table) -> None:
    assert set(lgsr.ALL_COLUMNS) <= set(table.column_names)
    ids = table.column(lgsr.BASKET_ID).to_pylist()
    assert all(isinstance(i, str) and len(i) == 15 for i in ids)
    assert table.column(lgsr.CUST_CODE).null_count == 0  # blank customer is an empty string, not a number


def test_reads_a_week_with_ids_as_strings(week: Path) -> None:
    table = read_transactions(week)
    assert table.num_rows == len(_lines(week)) - 1
    _check_ids_are_strings(table)


@pytest.mark.real_data
def test_reads_a_real_week_with_ids_as_strings(lgsr: Path) -> None:
    table = read_transactions(lgsr / "transactions_200607.csv.gz")
    assert table.num_rows == 25_241
    _check_ids_are_strings(table)
    assert len(resolve_files(lgsr)) == 94  # time.csv.gz is a calendar, not transactions


def test_folder_glob_and_list_give_the_same_rows(weeks: Weeks, week: Path) -> None:
    by_glob = read_transactions(str(weeks.folder / "transactions_20060[79].csv.gz"))
    by_list = read_transactions([week, weeks.folder / "transactions_200609.csv.gz"])
    assert by_glob.num_rows == by_list.num_rows > len(_lines(week))
    # time.csv.gz is a calendar, not transactions
    assert resolve_files(weeks.folder) == weeks.train + weeks.later


def test_csv_gz_plain_csv_and_parquet_agree(week: Path, tmp_path: Path) -> None:
    plain = _write(tmp_path / "w.csv", _lines(week))
    table = read_transactions(week)
    pq.write_table(pacsv.read_csv(week, convert_options=pacsv.ConvertOptions(
        column_types=dict.fromkeys(lgsr.STRING_COLUMNS, "string"))), tmp_path / "w.parquet")
    for other in (read_transactions(plain), read_transactions(tmp_path / "w.parquet")):
        assert other.num_rows == table.num_rows
        assert other.column(lgsr.SPEND).to_pylist() == table.column(lgsr.SPEND).to_pylist()
        assert other.column(lgsr.BASKET_ID).to_pylist() == table.column(lgsr.BASKET_ID).to_pylist()


def test_old_header_variant_is_normalised_with_its_code_maps(week: Path, tmp_path: Path) -> None:
    lines = _lines(week)
    header = lines[0].replace("seg_1", "CUST_PRICE_SENSITIVITY").replace("seg_2", "CUST_LIFESTAGE")
    new_to_old = {col: {v: k for k, v in m.items()} for col, m in lgsr.OLD_HEADER_CODES.items()}
    names = lines[0].split(",")
    i1, i2 = names.index("seg_1"), names.index("seg_2")
    body = []
    for line in lines[1:200]:
        cells = line.split(",")
        for i, col in ((i1, "seg_1"), (i2, "seg_2")):
            cells[i] = new_to_old[col].get(cells[i], cells[i])
        body.append(",".join(cells))
    old = read_transactions(_write(tmp_path / "old.csv.gz", [header, *body]))
    new = read_transactions(_write(tmp_path / "new.csv.gz", lines[:200]))
    for col in ("seg_1", "seg_2"):
        assert old.column(col).to_pylist() == new.column(col).to_pylist()
    assert {"AZ", "BG", "CT"} & set(new.column("seg_1").to_pylist())


@pytest.fixture(params=["generated", pytest.param("real", marks=pytest.mark.real_data)])
def spreadsheet_ids(request: pytest.FixtureRequest, week: Path, tmp_path: Path) -> Path:
    """A week whose BASKET_IDs a spreadsheet saved as 9.94E+14: made from a generated week, and the real
    header variant of ../shared/data/lgsr-variants when the real weeks are present."""
    if request.param == "real":
        variant = LGSR_VARIANTS / "transactions_200607_old_header_excel_ids.csv.gz"
        assert variant.exists(), f"the header variants are expected beside the LGSR weeks, at {variant}"
        return variant
    lines = _lines(week)[:20]
    column = lines[0].split(",").index(lgsr.BASKET_ID)
    mangled = [lines[0]]
    for line in lines[1:]:
        cells = line.split(",")
        cells[column] = f"{float(cells[column]):.2E}"
        mangled.append(",".join(cells))
    return _write(tmp_path / "transactions_200607_excel_ids.csv.gz", mangled)


def test_spreadsheet_mangled_ids_are_refused_not_merged(spreadsheet_ids: Path) -> None:
    with pytest.raises(DataError) as err:
        read_transactions(spreadsheet_ids)
    message = str(err.value)
    assert spreadsheet_ids.name in message and "line 2" in message and "BASKET_ID" in message
    assert "scientific notation" in message and "spreadsheet" in message


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("QUANTITY", "abc", "'abc' is not a number"),
        ("QUANTITY", "-2", "quantity must be positive"),
        ("SPEND", "1,5", "is not a number"),
        ("SHOP_WEEK", "2006x7", "is not a whole number"),
        ("BASKET_PRICE_SENSITIVITY", "ZZ", "label 'ZZ' is not one of LA, MM, UM, XX"),
        ("SPEND", "nan", "is not a finite number"),
    ],
)
def test_bad_values_are_refused_with_file_line_and_column(week: Path, tmp_path: Path, column: str, value: str,
                                                          expected: str) -> None:
    lines = _lines(week)[:50]
    names = lines[0].split(",")
    cells = lines[37].split(",")
    cells[names.index(column)] = f'"{value}"' if "," in value else value
    lines[37] = ",".join(cells)
    path = _write(tmp_path / "bad.csv.gz", lines)
    with pytest.raises(DataError) as err:
        read_transactions(path)
    assert f"{path}, line 38, column {column}" in str(err.value)
    assert expected in str(err.value)


def test_missing_required_column_names_the_column(week: Path, tmp_path: Path) -> None:
    lines = [",".join(c for c in line.split(",")[:5] + line.split(",")[6:]) for line in _lines(week)[:10]]
    with pytest.raises(DataError, match=r"line 1: missing required column\(s\) SPEND"):
        read_transactions(_write(tmp_path / "nospend.csv", lines))


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_transactions(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_transactions(tmp_path / "empty.csv")


def test_baskets_group_lines_and_keep_one_label_each(week: Path) -> None:
    baskets = table_to_baskets(read_transactions(week))
    assert baskets.lines.n_baskets == np.unique(baskets.basket_ids).size
    assert baskets.label is not None and set(baskets.label) <= set(LABELS)
    assert np.bincount(baskets.lines.basket).sum() == len(_lines(week)) - 1


def test_cli_reports_bad_file_without_traceback(spreadsheet_ids: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "retail_prediction.cli", "train", "--data", str(spreadsheet_ids),
                           "--out", str(tmp_path / "m.tar.gz")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "line 2, column BASKET_ID" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m.tar.gz").exists()
