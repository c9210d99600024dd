"""Score transaction files with a packed model, through the same `PredictionService` the API serves."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from ..artifact.members import ArtifactLimits
from ..data import lgsr
from ..data.baskets import filter_weeks, table_to_baskets
from ..data.chunks import CHUNK_BYTES, file_chunks
from ..data.reading import DataError, Progress
from ..serving.model_manager import LoadedModel
from ..serving.service import PredictionService
from .evaluation import confusion_png, evaluation_report, markdown_report
from .explaining import explanations_path, write_explanations

SCORING_COLUMNS = (lgsr.SHOP_WEEK, lgsr.QUANTITY, lgsr.SPEND, lgsr.PROD_CODE, *lgsr.HIERARCHY,
                   lgsr.BASKET_ID)
DataSpec = str | Path | Sequence[str | Path]


def evaluate(model: Path, data: DataSpec, json_out: Path, *, png: Path | None = None, markdown: Path | None = None,
             first_week: int | None = None, last_week: int | None = None,
             progress: Progress | None = None, limits: ArtifactLimits | None = None,
             chunk_bytes: int = CHUNK_BYTES) -> dict[str, Any]:
    """Score labelled files and write the report (JSON, confusion matrix PNG, Markdown).

    Streams like `predict_files`: a chunk of whole files at a time, only its lines in the chosen weeks kept;
    what is held across chunks is a few numbers per basket (label, probabilities, unseen products), not lines.
    """
    service, served = PredictionService.for_file(model, limits=limits)
    predictor = served.predictor
    classes = list(predictor.classes)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    weeks: list[int] = []
    for chunk in file_chunks(data, columns=(*SCORING_COLUMNS, lgsr.LABEL), required=lgsr.REQUIRED_FOR_TRAINING,
                             chunk_bytes=chunk_bytes, weeks=(first_week, last_week)):
        table = filter_weeks(chunk.table, first_week, last_week)
        del chunk
        if table.num_rows == 0:
            continue
        baskets = table_to_baskets(table)
        del table
        unknown_labels = sorted(set(np.unique(baskets.label).tolist()) - set(classes))
        if unknown_labels:
            raise DataError(str(data), f"labels {unknown_labels} were not among the model's classes {classes}",
                            column=lgsr.LABEL)
        y = np.searchsorted(np.asarray(classes), baskets.label).astype(np.int8)
        proba = service.score_lines(served, baskets.lines)
        parts.append((y, proba, predictor.unknown_products(baskets.lines) > 0))
        if baskets.week is not None:
            weeks += [int(baskets.week.min()), int(baskets.week.max())]
        if progress is not None:
            progress(f"scored {sum(p[0].size for p in parts):,} baskets")
    if not parts:
        raise DataError(str(data), "no lines left in the chosen weeks")
    y, proba, unseen = (np.concatenate([p[i] for p in parts]) for i in range(3))
    report = evaluation_report(y.astype(np.int64), proba, classes, unseen)
    report["model_version"] = predictor.version
    report["weeks"] = [min(weeks), max(weeks)] if weeks else None
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(report, indent=2))
    title = f"{predictor.version} on weeks {report['weeks']}"
    (png or json_out.with_suffix(".png")).write_bytes(confusion_png(report, title))
    (markdown or json_out.with_suffix(".md")).write_text(markdown_report(report, title=f"Evaluation of {title}"))
    return report


def predict_files(model: Path, data: DataSpec, out: Path, *, progress: Progress | None = None,
                  limits: ArtifactLimits | None = None, chunk_bytes: int = CHUNK_BYTES,
                  explain: bool = False) -> tuple[int, float]:
    """Write basket_id, label, one probability per class (and with `explain`, each basket's explanation as
    JSON lines: `explaining.explanations_path`); returns (baskets, seconds incl. reading).

    Streams: files are read a chunk of whole files at a time (`data.chunks`, the next chunk read while this
    one is scored) and each chunk's rows are appended to `out` as they are scored, so memory is bounded by a
    chunk, not by the input. `out` (and the explanations) appear only when complete (`*.partial` until then).
    """
    started = time.monotonic()
    # One ONNX thread per block: the blocks themselves run two at a time (see `Predictor.predict_batch`).
    service, served = PredictionService.for_file(model, limits=limits, intra_op_threads=1)
    classes = list(served.predictor.classes)
    schema = pa.schema([("basket_id", pa.string()), ("label", pa.string()),
                        *[(f"p_{c}", pa.float64()) for c in classes]])
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    why = explanations_path(out) if explain else None
    why_partial = None if why is None else why.with_name(why.name + ".partial")
    n = 0
    try:
        with pacsv.CSVWriter(partial, schema) as writer, ThreadPoolExecutor(1) as background, \
                (why_partial.open("wb") if why_partial else contextlib.nullcontext()) as explained:
            written: Future[None] | None = None  # the previous chunk's rows, written while this one is scored
            for chunk in file_chunks(data, columns=SCORING_COLUMNS, required=lgsr.REQUIRED_FOR_SCORING,
                                     chunk_bytes=chunk_bytes):
                rows, scored = _score_chunk(service, served, chunk.table, schema, explained)
                if written is not None:
                    written.result()
                written = background.submit(writer.write_table, rows)  # Arrow's CSV writer releases the GIL
                n += scored
                if progress is not None:
                    elapsed = time.monotonic() - started
                    progress(f"scored {_span(chunk.files)}: {scored:,} baskets; {n:,} in {elapsed:.1f}s "
                             f"({n / max(elapsed, 1e-9):,.0f} baskets/s)")
                del chunk, rows  # before the next one is asked for (and the one after starts being read)
            if written is not None:
                written.result()
        if why is not None and why_partial is not None:
            why_partial.replace(why)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
        if why_partial is not None:
            why_partial.unlink(missing_ok=True)
    return n, time.monotonic() - started


def _score_chunk(service: PredictionService, served: LoadedModel, table: pa.Table, schema: pa.Schema,
                 explained: IO[bytes] | None) -> tuple[pa.Table, int]:
    """One chunk's baskets scored: their rows (written by the caller) and how many; explanations appended."""
    baskets = table_to_baskets(table, with_label=False)
    proba = service.score_lines(served, baskets.lines)
    # IDs and labels stay Arrow strings (a take from the class names): no NumPy str array in between
    labels = pa.array(served.predictor.classes, pa.string()).take(pa.array(proba.argmax(axis=1)))
    columns = [baskets.ids.cast(pa.string()), labels, *np.round(proba, 6).T]
    if explained is not None:
        write_explanations(explained, served.predictor, baskets.lines, baskets.basket_ids, proba)
    return pa.table(columns, schema=schema), baskets.lines.n_baskets


def _span(files: list[Path]) -> str:
    return files[0].name if len(files) == 1 else f"{files[0].name} .. {files[-1].name} ({len(files)} files)"
