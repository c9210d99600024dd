"""The weeks a Parquet file holds, from its footer's statistics, so that a run limited to some weeks skips the
files outside them unread (`train --until-week` on a folder of every week reads only what it trains on). A CSV
must be read to know; so must a Parquet file without the statistics."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from . import lgsr
from .sources import S3Object, Source, open_file


def week_span(path: Source) -> tuple[int, int] | None:
    """(first, last) shop week of a Parquet file's lines, or None when its footer cannot tell."""
    name = path.key if isinstance(path, S3Object) else str(path)
    if not name.endswith(".parquet"):
        return None
    try:
        meta = pq.ParquetFile(open_file(path)).metadata
        names = [lgsr.HEADER_ALIASES.get(n, n) for n in meta.schema.to_arrow_schema().names]
        column = names.index(lgsr.SHOP_WEEK)
        stats = [meta.row_group(g).column(column).statistics for g in range(meta.num_row_groups)]
    except (OSError, ValueError, pa.ArrowException):
        return None  # reading the file will say what is wrong with it
    if not stats or any(s is None or not s.has_min_max for s in stats):
        return None
    return int(min(s.min for s in stats)), int(max(s.max for s in stats))


def outside_weeks(path: Source, first: int | None, last: int | None) -> bool:
    """True only when the file's footer shows that none of its lines is in weeks first..last."""
    if first is None and last is None:
        return False
    span = week_span(path)
    return span is not None and ((first is not None and span[1] < first) or (last is not None and span[0] > last))
