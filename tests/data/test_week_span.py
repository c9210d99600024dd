"""Files outside the chosen weeks are skipped unread when their Parquet footer says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from retail_prediction.data import chunks, lgsr
from retail_prediction.data.synthetic import generate
from retail_prediction.data.week_span import outside_weeks, week_span
from retail_prediction.training import stream
from retail_prediction.training.spill import Spill


@pytest.fixture(scope="module")
def parquet_weeks(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("weeks")
    generate(folder, weeks=3, customers=300, seed=2, start_week=200651, fmt="parquet", workers=1)
    return sorted(folder.glob("transactions_*.parquet"))


def test_the_footer_gives_each_files_weeks(parquet_weeks: list[Path], tmp_path: Path) -> None:
    assert [week_span(p) for p in parquet_weeks] == [(200651, 200651), (200652, 200652), (200701, 200701)]
    assert outside_weeks(parquet_weeks[2], None, 200652) and not outside_weeks(parquet_weeks[1], None, 200652)
    assert outside_weeks(parquet_weeks[0], 200652, None) and not outside_weeks(parquet_weeks[0], None, None)
    csv = tmp_path / "transactions_200651.csv"
    csv.write_text(f"{','.join(lgsr.REQUIRED_FOR_TRAINING)}\n200651,1,1.5,PRD1,B1,MM\n")
    broken = tmp_path / "transactions_200652.parquet"
    broken.write_bytes(b"not parquet")
    assert week_span(csv) is None and week_span(broken) is None  # unknown: read, and refused there if bad
    assert not outside_weeks(broken, None, 200601)


def _spy(monkeypatch: pytest.MonkeyPatch, module: object) -> list[str]:
    seen: list[str] = []
    real = module.read_transactions  # type: ignore[attr-defined]

    def recording(spec: list[Path], **kwargs: object) -> object:
        seen.extend(str(p) for p in spec)
        return real(spec, **kwargs)

    monkeypatch.setattr(module, "read_transactions", recording)
    return seen


def test_train_reads_only_the_files_up_to_its_last_week(parquet_weeks: list[Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _spy(monkeypatch, stream)
    spilled = stream.spill_files(parquet_weeks, Spill(tmp_path), 200652, 1, lambda _: None)
    assert seen == [str(p) for p in parquet_weeks[:2]] and spilled.weeks == {200651, 200652}


def test_scoring_chunks_skip_the_files_outside_the_weeks(parquet_weeks: list[Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _spy(monkeypatch, chunks)
    read = list(chunks.file_chunks(parquet_weeks, columns=[lgsr.SHOP_WEEK, lgsr.BASKET_ID], required=[],
                                   chunk_bytes=1, weeks=(200652, None)))
    assert seen == [str(p) for p in parquet_weeks[1:]] and [c.files[0] for c in read] == parquet_weeks[1:]
    with pytest.raises(chunks.DataError, match=r"hold no transaction lines in weeks 200801\.\.any"):
        list(chunks.file_chunks(parquet_weeks, columns=[lgsr.SHOP_WEEK], required=[], weeks=(200801, None)))
