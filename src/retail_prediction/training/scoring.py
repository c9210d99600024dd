"""Score transaction files with a packed model, through the same `PredictionService` the API serves."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from ..artifact.members import ArtifactLimits
from ..data import lgsr
from ..data.reading import DataError, Progress, filter_weeks, read_transactions, table_to_baskets
from ..serving.service import PredictionService
from .evaluation import confusion_png, evaluation_report, markdown_report
from .explaining import explanations_path, write_explanations

SCORING_COLUMNS = (lgsr.SHOP_WEEK, lgsr.QUANTITY, lgsr.SPEND, lgsr.PROD_CODE, *lgsr.HIERARCHY,
                   lgsr.BASKET_ID)
DataSpec = str | Path | Sequence[str | Path]


def evaluate(model: Path, data: DataSpec, json_out: Path, *, png: Path | None = None, markdown: Path | None = None,
             first_week: int | None = None, last_week: int | None = None,
             progress: Progress | None = None, limits: ArtifactLimits | None = None) -> dict[str, Any]:
    service, served = PredictionService.for_file(model, limits=limits)
    predictor = served.predictor
    table = read_transactions(data, columns=(*SCORING_COLUMNS, lgsr.LABEL), progress=progress)
    table = filter_weeks(table, first_week, last_week)
    if table.num_rows == 0:
        raise DataError(str(data), "no lines left in the chosen weeks")
    baskets = table_to_baskets(table)
    classes = list(predictor.classes)
    unknown_labels = sorted(set(np.unique(baskets.label).tolist()) - set(classes))
    if unknown_labels:
        raise DataError(str(data), f"labels {unknown_labels} were not among the model's classes {classes}",
                        column=lgsr.LABEL)
    y = np.searchsorted(np.asarray(classes), baskets.label)
    proba = service.score_lines(served, baskets.lines)
    unseen = predictor.unknown_products(baskets.lines) > 0
    report = evaluation_report(y, proba, classes, unseen)
    report["model_version"] = predictor.version
    report["weeks"] = [int(baskets.week.min()), int(baskets.week.max())] if baskets.week is not None else None
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(report, indent=2))
    title = f"{predictor.version} on weeks {report['weeks']}"
    (png or json_out.with_suffix(".png")).write_bytes(confusion_png(report, title))
    (markdown or json_out.with_suffix(".md")).write_text(markdown_report(report, title=f"Evaluation of {title}"))
    return report


def predict_files(model: Path, data: DataSpec, out: Path, *, progress: Progress | None = None,
                  limits: ArtifactLimits | None = None, explain: bool = False) -> tuple[int, float]:
    """Write basket_id, label, one probability per class (and with `explain`, each basket's explanation as
    JSON lines: `explaining.explanations_path`); returns (baskets, seconds incl. reading)."""
    started = time.monotonic()
    # One ONNX thread per block: the blocks themselves run two at a time (see `Predictor.predict_batch`).
    service, served = PredictionService.for_file(model, limits=limits, intra_op_threads=1)
    predictor = served.predictor
    table = read_transactions(data, columns=SCORING_COLUMNS, required=lgsr.REQUIRED_FOR_SCORING,
                              progress=progress)
    baskets = table_to_baskets(table, with_label=False)
    proba = service.score_lines(served, baskets.lines)
    labels = np.asarray(predictor.classes)[proba.argmax(axis=1)]
    columns = {"basket_id": pa.array(baskets.basket_ids), "label": pa.array(labels)}
    for i, c in enumerate(predictor.classes):
        columns[f"p_{c}"] = pa.array(np.round(proba[:, i], 6))
    out.parent.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(pa.table(columns), out)
    if explain:
        write_explanations(explanations_path(out), predictor, baskets.lines, baskets.basket_ids, proba)
    return baskets.lines.n_baskets, time.monotonic() - started
