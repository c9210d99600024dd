"""`predict` streams: chunks of whole files scored and appended as they come, the same rows as scoring the
whole input at once, memory that does not grow with the input, and no basket split over two files."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from conftest import Weeks
from retail_prediction.data import lgsr
from retail_prediction.data.baskets import table_to_baskets
from retail_prediction.data.chunks import CHUNK_BYTES
from retail_prediction.data.reading import read_transactions
from retail_prediction.data.synthetic import generate
from retail_prediction.serving.service import PredictionService
from retail_prediction.training.scoring import SCORING_COLUMNS, predict_files


def _whole_input_csv(model: Path, files: list[Path]) -> bytes:
    """What `predict` wrote before it streamed: every file in one table, one scoring call, one CSV."""
    service, served = PredictionService.for_file(model, intra_op_threads=1)
    table = read_transactions(files, columns=SCORING_COLUMNS, required=lgsr.REQUIRED_FOR_SCORING)
    baskets = table_to_baskets(table, with_label=False)
    proba = service.score_lines(served, baskets.lines)
    columns = {"basket_id": pa.array(baskets.basket_ids),
               "label": pa.array(np.asarray(served.predictor.classes)[proba.argmax(axis=1)])}
    for i, c in enumerate(served.predictor.classes):
        columns[f"p_{c}"] = pa.array(np.round(proba[:, i], 6))
    sink = io.BytesIO()
    pacsv.write_csv(pa.table(columns), sink)
    return sink.getvalue()


@pytest.mark.parametrize("chunk_bytes", [1, CHUNK_BYTES], ids=["a-file-per-chunk", "one-chunk"])
def test_streamed_output_is_the_whole_input_output(trained_model: Path, weeks: Weeks, tmp_path: Path,
                                                   chunk_bytes: int) -> None:  # fmt: skip
    out = tmp_path / "pred.csv"
    progress: list[str] = []
    n, _ = predict_files(trained_model, weeks.later, out, chunk_bytes=chunk_bytes, progress=progress.append)
    assert out.read_bytes() == _whole_input_csv(trained_model, weeks.later)
    assert n == out.read_text().count("\n") - 1 > 1000
    assert len(progress) == (len(weeks.later) if chunk_bytes == 1 else 1)
    assert not (tmp_path / "pred.csv.partial").exists()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "retail_prediction.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_a_basket_in_two_files_is_refused_naming_it_and_both_files(trained_model: Path, weeks: Weeks,
                                                                   tmp_path: Path) -> None:  # fmt: skip
    first = weeks.later[0]
    again = shutil.copy(first, tmp_path / "transactions_copy.csv.gz")
    out = tmp_path / "pred.csv"
    proc = _cli("predict", "--model", str(trained_model), "--data", str(first), str(again), "--out", str(out))
    assert proc.returncode == 2
    basket = read_transactions(first).column(lgsr.BASKET_ID)[0].as_py()
    assert f"error: {again}, line 2, column BASKET_ID: basket {basket} is also in {first}" in proc.stderr
    assert not out.exists() and not (tmp_path / "pred.csv.partial").exists()


def test_files_whose_id_ranges_interleave_without_a_shared_basket_are_scored(trained_model: Path, weeks: Weeks,
                                                                             tmp_path: Path) -> None:  # fmt: skip
    lines = read_transactions(weeks.later[0])
    ids = np.asarray(lines.column(lgsr.BASKET_ID).to_pylist())
    odd = np.asarray([int(i) % 2 for i in ids], dtype=bool)
    for name, keep in (("odd", odd), ("even", ~odd)):
        part = lines.filter(pa.array(keep))
        part = part.cast(pa.schema([pa.field(f.name, pa.string()) if pa.types.is_dictionary(f.type) else f
                                    for f in part.schema]))
        pacsv.write_csv(part, tmp_path / f"transactions_{name}.csv")
    out = tmp_path / "pred.csv"
    proc = _cli("predict", "--model", str(trained_model), "--data", str(tmp_path), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().count("\n") - 1 == len(set(ids))
    assert "scored transactions_even.csv .. transactions_odd.csv (2 files)" in proc.stderr


PEAK_SCRIPT = """
import sys
from pathlib import Path
from retail_prediction.training.scoring import predict_files
predict_files(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), chunk_bytes=int(sys.argv[4]))
status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
print(int(status["VmHWM"].split()[0]) // 1024)
"""


def _peak_mb(model: Path, data: Path, out: Path, chunk_bytes: int) -> int:
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(model), str(data), str(out), str(chunk_bytes)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


def test_peak_memory_does_not_grow_with_the_input(trained_model: Path, tmp_path: Path) -> None:
    summary = generate(tmp_path / "all", weeks=12, customers=30_000, seed=5)  # ~2 M lines
    weeks = sorted(f for f in summary.files if f.name.startswith("transactions_"))
    # N and 3N lines; N is four chunks, past the allocator's first growth (2 weeks: ~40 MB less than 4 or 12)
    small, large = tmp_path / "small", tmp_path / "large"
    for folder, files in ((small, weeks[:4]), (large, weeks)):
        folder.mkdir()
        for week in files:
            (folder / week.name).symlink_to(week)
    out = tmp_path / "pred.csv"
    n_peak = _peak_mb(trained_model, small, out, chunk_bytes=1)
    peak_3n = _peak_mb(trained_model, large, out, chunk_bytes=1)
    whole_3n = _peak_mb(trained_model, large, out, chunk_bytes=CHUNK_BYTES)  # the 12 weeks in one chunk
    assert peak_3n <= n_peak + 40, (n_peak, peak_3n)
    assert whole_3n >= n_peak + 100, ("the input is too small to tell", n_peak, whole_3n)
