"""`retail-prediction monitor`: a payload log -> a drift report (PSI per hour and overall, histograms live vs
the model's reference, the class mix over time) as Markdown, HTML, PNGs and summary.json.

The logged baskets are featurized by the model given (`load_predictor`, `Predictor.score`: the served
featurization), binned with the model's reference profile and counted per UTC hour, so memory grows with
the hours, not the records. PSI is the drift core's (`serving/drift.py`): what the server's gauges show
for its rolling window, here for every hour of the log.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact.members import ArtifactLimits
from ..serving.drift import bin_counts, psi
from ..serving.predictor import Predictor, load_predictor
from .payloads import ReadStats, Record, read_records

CHUNK, CHUNK_LINES = 2048, 100_000  # baskets featurized together, at most (and at most this many lines)
STABLE, MAJOR = 0.1, 0.25  # PSI below STABLE: stable; up to MAJOR: moderate shift; above: major shift


class NoRecords(FileNotFoundError):
    """The log holds no readable record (a FileNotFoundError: nothing to read, the CLI says so and exits 2)."""


@dataclass
class Counts:
    """One hour's (or the whole log's) baskets: per profiled feature its reference-bin counts, the class
    the model predicts, the class served (the logged answer) and the model versions that served."""

    baskets: int = 0
    bins: dict[str, np.ndarray] = field(default_factory=dict)
    predicted: np.ndarray | None = None
    served: Counter[str] = field(default_factory=Counter)
    agreeing: int = 0  # logged answers equal to this model's
    versions: Counter[str] = field(default_factory=Counter)

    def add(self, other: Counts) -> None:
        self.baskets += other.baskets
        for name, counts in other.bins.items():
            self.bins[name] = self.bins[name] + counts if name in self.bins else counts.copy()
        if other.predicted is not None:
            self.predicted = other.predicted.copy() if self.predicted is None else self.predicted + other.predicted
        self.served.update(other.served)
        self.agreeing += other.agreeing
        self.versions.update(other.versions)


class Accumulator:
    """Counts per hour of the records fed in chunks."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.profile = predictor.profile
        names = list(predictor.feature_names)
        self.columns = {} if self.profile is None else {
            name: names.index(f.column) for name, f in self.profile.features.items() if f.column in names}
        self.hours: dict[str, Counts] = {}

    def add(self, chunk: list[tuple[str, Record]]) -> None:
        scores = self.predictor.score([record.basket.basket_items for _, record in chunk])
        predicted = scores.proba.argmax(axis=1)
        classes = self.predictor.classes
        hours = np.array([hour for hour, _ in chunk])
        for hour in np.unique(hours).tolist():
            rows = np.flatnonzero(hours == hour)
            counts = Counts(baskets=len(rows))
            if self.profile is not None:
                counts.bins = {name: bin_counts(self.profile.features[name], scores.features[rows, column])
                               for name, column in self.columns.items()}
            counts.predicted = np.bincount(predicted[rows], minlength=len(classes))
            for i in rows.tolist():
                record = chunk[i][1]
                label = (record.answer or {}).get("label")
                if isinstance(label, str):
                    counts.served[label] += 1
                    counts.agreeing += label == classes[predicted[i]]
                counts.versions[record.model_version or "unknown"] += 1
            self.hours.setdefault(hour, Counts()).add(counts)


def _chunks(records: Iterable[tuple[str, Record]]) -> Iterator[list[tuple[str, Record]]]:
    """Records in chunks of CHUNK baskets or CHUNK_LINES lines, whichever comes first (a log of huge
    baskets stays within memory too)."""
    chunk: list[tuple[str, Record]] = []
    lines = 0
    for item in records:
        chunk.append(item)
        lines += len(item[1].basket.basket_items)
        if len(chunk) == CHUNK or lines >= CHUNK_LINES:
            yield chunk
            chunk, lines = [], 0
    if chunk:
        yield chunk


def _figures(counts: Counts, accumulator: Accumulator) -> dict[str, Any]:
    """PSI per feature and of the predicted mix, the mix itself, for one hour or the whole log."""
    profile, classes = accumulator.profile, accumulator.predictor.classes
    predicted = counts.predicted if counts.predicted is not None else np.zeros(len(classes))
    out: dict[str, Any] = {
        "baskets": counts.baskets,
        "class_shares": dict(zip(classes, (predicted / max(1, counts.baskets)).tolist(), strict=True)),
        "served_agreement": counts.agreeing / sum(counts.served.values()) if counts.served else None,
        "model_versions": dict(counts.versions.most_common()),
    }
    if profile is not None:
        out["psi"] = {name: psi(profile.features[name].shares, bins) for name, bins in counts.bins.items()}
        out["prediction_psi"] = psi(profile.class_shares, predicted)
    return out


def summarize(accumulator: Accumulator, stats: ReadStats, log_uri: str, model: Path,
              min_baskets: int) -> dict[str, Any]:
    """Everything the report shows, as plain data (also written as summary.json)."""
    p = accumulator.predictor
    total = Counts()
    for counts in accumulator.hours.values():
        total.add(counts)
    hours = []
    for hour in sorted(accumulator.hours):
        figures = _figures(accumulator.hours[hour], accumulator)
        hours.append({"hour": hour, "few_baskets": figures["baskets"] < min_baskets, **figures})
    summary: dict[str, Any] = {
        "log": log_uri, "model": {"path": str(model), "version": p.version, "sha256": p.sha256},
        "read": {"parts": stats.parts, "unreadable_parts": stats.unreadable_parts, "records": stats.records,
                 "malformed_lines": stats.malformed_lines, "problems": stats.problems},
        "min_baskets": min_baskets, "thresholds": {"stable": STABLE, "major": MAJOR},
        "has_profile": accumulator.profile is not None,
        "overall": _figures(total, accumulator), "hours": hours,
    }
    if accumulator.profile is not None:
        features = accumulator.profile.features
        summary["reference"] = {"baskets": accumulator.profile.baskets, "weeks": accumulator.profile.weeks,
                                "class_shares": dict(zip(accumulator.profile.classes,
                                                         accumulator.profile.class_shares, strict=True))}
        summary["histograms"] = {name: {"column": features[name].column, "edges": features[name].edges,
                                        "reference": features[name].shares,
                                        "live": (bins / max(1, bins.sum())).tolist()}
                                 for name, bins in total.bins.items()}
    return summary


def monitor(log_uri: str, model: Path, out: Path, *, limits: ArtifactLimits | None = None, min_baskets: int = 50,
            progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Read the log, featurize, count per hour, write out/: report.md, report.html, *.png, summary.json."""
    from . import plots, render  # matplotlib: only here, never in what serving imports

    predictor = load_predictor(model, limits=limits)
    if predictor.profile is None:
        progress(f"{model} has no reference profile (trained before drift monitoring): no PSI, class mix only")
    accumulator, stats = Accumulator(predictor), ReadStats(warn=lambda message: progress(f"warning: {message}"))
    for chunk in _chunks(read_records(log_uri, stats)):
        accumulator.add(chunk)
        progress(f"{stats.records:,} records read from {stats.parts} parts")
    if not stats.records:
        raise NoRecords(f"no payload records under {log_uri} ({stats.parts} parts, {stats.malformed_lines} "
                        f"malformed lines, {stats.unreadable_parts} unreadable parts)")
    summary = summarize(accumulator, stats, log_uri, model, min_baskets)
    out.mkdir(parents=True, exist_ok=True)
    images = plots.draw(summary, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    render.write(summary, images, out)
    return summary
