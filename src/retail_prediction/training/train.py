"""Learn tables + fit candidates, choose by macro-F1 on the latest weeks, refit, export, pack.

Validation is by time: the latest weeks of the given data are held out, never random rows, so the
figures say how the model does on weeks it has not seen. The chosen candidate is then refit on all
weeks and exported to ONNX, and ONNX Runtime must reproduce its probabilities.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from threadpoolctl import threadpool_limits

from .. import __version__
from ..artifact.archive import pack_artifact
from ..cpus import cpu_budget
from ..data import lgsr
from ..data.reading import Baskets, DataError, Progress, ReadSummary, filter_weeks, read_transactions, table_to_baskets
from ..features.fitting import fit_tables, out_of_fold_features
from ..features.tables import FeatureTables, basket_features
from ..serving.predictor import probability_output
from .candidates import Candidate, candidates
from .evaluation import classification_metrics, confusion_png, markdown_report
from .profile import reference_profile

TRAIN_COLUMNS = (lgsr.SHOP_WEEK, lgsr.QUANTITY, lgsr.SPEND, lgsr.PROD_CODE, *lgsr.HIERARCHY,
                 lgsr.BASKET_ID, lgsr.LABEL)
PARITY_TOLERANCE = 1e-5
@dataclass(frozen=True)
class TrainConfig:
    until_week: int | None = None
    validation_weeks: int = 13
    n_folds: int = 10
    evidence_power: float = 2.0
    prior_strength: float = 1.0
    seed: int = 0
    # The classifiers see at most this many baskets (a seeded sample); the tables always learn from every
    # line. 43 features need far fewer rows than the tables' products do, and this bounds the memory and
    # time of a 50-million-line training run.
    max_model_baskets: int = 2_000_000
    # Threads for every pool of the run (Arrow, BLAS, LightGBM's OpenMP); 0 = the CPUs this process may use.
    threads: int = 0


@dataclass(frozen=True)
class TrainResult:
    path: Path
    sha256: str
    chosen: str
    validation: dict[str, Any]
    metadata: dict[str, Any]


class _Clock:
    def __init__(self, progress: Progress | None):
        self.start = time.monotonic()
        self.progress = progress

    def __call__(self, message: str) -> None:
        if self.progress:
            self.progress(f"[{time.monotonic() - self.start:6.1f}s] {message}")


def train(data: str | Path | Sequence[str | Path], out: Path, config: TrainConfig = TrainConfig(),
          progress: Progress | None = None) -> TrainResult:
    config = replace(config, threads=config.threads or cpu_budget())
    # Each library would otherwise size its own pool by the node's cores, not the pod's CPU limit.
    previous = pa.cpu_count()
    pa.set_cpu_count(config.threads)
    try:
        with threadpool_limits(limits=config.threads):
            return _train(data, out, config, _Clock(progress))
    finally:
        pa.set_cpu_count(previous)


def _train(data: str | Path | Sequence[str | Path], out: Path, config: TrainConfig, say: Progress) -> TrainResult:
    summary = ReadSummary()
    table = read_transactions(data, columns=TRAIN_COLUMNS, progress=say, summary=summary)
    table = filter_weeks(table, None, config.until_week)
    weeks = np.unique(table[lgsr.SHOP_WEEK].to_numpy())
    if weeks.size < 2:
        raise DataError(", ".join(summary.files), f"need at least 2 shop weeks to validate on later weeks, "
                        f"found {weeks.size}")
    cut = validation_cut(weeks, config)
    say(f"{table.num_rows:,} lines, weeks {weeks[0]}-{weeks[-1]}; validating on the last "
        f"{int((weeks > cut).sum())} weeks (> {cut})")

    # One grouping of lines into baskets serves the comparison and the refit; the Arrow table goes at once.
    everything = table_to_baskets(table)
    del table
    pa.default_memory_pool().release_unused()  # Arrow's allocator would keep the table's pages otherwise
    classes = tuple(np.unique(everything.label).tolist())
    held_out = everything.select(everything.week > cut)
    comparison, val_detail, reference = _compare(everything.select(everything.week <= cut), held_out, classes,
                                                   config, say)
    chosen = max((c for c in comparison if c["exportable"]), key=lambda c: c["macro_f1"])["name"]
    features, names, predicted = reference
    profile = reference_profile(features, names, predicted[chosen], classes, np.unique(held_out.week).tolist())
    say(f"chosen: {chosen} (validation macro-F1 {comparison_by(comparison, chosen)['macro_f1']:.4f})")

    tables, onnx_bytes, parity, size = _refit(everything, classes, chosen, config, say)
    meta = _metadata(everything, summary, weeks, cut, classes, chosen, size, comparison, parity, tables,
                     config)
    files = _artifact_files(onnx_bytes, tables, meta, val_detail[chosen], comparison)
    files["profile.json"] = json.dumps(profile, indent=1).encode()
    sha = pack_artifact(out, files, metadata={"model_version": meta["model_version"]})
    say(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, sha256 {sha[:12]}…)")
    return TrainResult(out, sha, chosen, val_detail[chosen], meta)


def validation_cut(weeks: np.ndarray, config: TrainConfig) -> int:
    """The last training week of the comparison: the latest `validation_weeks` (at most a quarter) are held out."""
    n_val = min(config.validation_weeks, max(1, weeks.size // 4))
    return int(weeks[-n_val - 1])


def comparison_by(comparison: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(c for c in comparison if c["name"] == name)


def _labels(baskets: Baskets, classes: Sequence[str]) -> np.ndarray:
    return np.searchsorted(np.asarray(classes), baskets.label).astype(np.int64)


def _learn(baskets: Baskets, classes: Sequence[str], config: TrainConfig,
           say: Progress) -> tuple[FeatureTables, np.ndarray, np.ndarray]:
    """Tables from all these baskets; features (out of fold: no label leaks in) and labels of the baskets the
    classifiers see, a seeded sample of at most `max_model_baskets`."""
    say(f"learning the tables and latent product classes from {baskets.lines.n_baskets:,} baskets …")
    y = _labels(baskets, classes)
    tables, folds = fit_tables(baskets.lines, y, classes, hierarchy_names=lgsr.HIERARCHY,
                               evidence_power=config.evidence_power, prior_strength=config.prior_strength,
                               n_folds=config.n_folds, seed=config.seed)
    keep = _sample(baskets.lines.n_baskets, config)
    if keep is not None:
        # Features of the sampled baskets only: those of all would cost time and a float64 row per basket.
        if folds is not None:
            folds = replace(folds, line_fold=folds.line_fold[keep[baskets.lines.basket]])
        baskets, y = baskets.select(keep), y[keep]
    lines = baskets.lines
    return tables, basket_features(lines, tables) if folds is None else out_of_fold_features(lines, tables, folds), y


def _compare(train_part: Baskets, valid_part: Baskets, classes: Sequence[str], config: TrainConfig,
             say: Progress) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]],
                                     tuple[np.ndarray, list[str], dict[str, np.ndarray]]]:
    """Fit every candidate on the earlier weeks and score it on the held-out ones: the comparison rows, each
    candidate's validation metrics, and (for the drift profile) the held-out feature rows, their column names
    and each candidate's predicted class indexes."""
    tables, X, y = _learn(train_part, classes, config, say)
    Xv = basket_features(valid_part.lines, tables)
    yv = _labels(valid_part, classes)
    unseen = Xv[:, tables.feature_names().index("unseen_product_share")] > 0
    say(f"features: {X.shape[0]:,} training (of {train_part.lines.n_baskets:,}) and {Xv.shape[0]:,} validation "
        f"baskets x {X.shape[1]}")
    comparison, detail, predicted = [], {}, {}
    for cand in candidates(config.seed, config.threads):
        start = time.monotonic()
        say(f"fitting {cand.name} …")
        cand.fit(X, y, len(classes))
        proba = cand.predict_proba(Xv)
        metrics = classification_metrics(yv, proba, classes)
        metrics["unseen_products"] = classification_metrics(yv[unseen], proba[unseen], classes)
        detail[cand.name] = metrics
        predicted[cand.name] = proba.argmax(axis=1)
        comparison.append({"name": cand.name, "macro_f1": metrics["macro_f1"], "accuracy": metrics["accuracy"],
                           "log_loss": metrics["log_loss"], "exportable": cand.name != "majority",
                           "unseen_accuracy": metrics["unseen_products"]["accuracy"],
                           "fit_seconds": round(time.monotonic() - start, 2), **_learned_size(cand)})
        say(f"{cand.name}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} "
            f"({time.monotonic() - start:.1f}s{_size_note(cand)})")
    return comparison, detail, (Xv, tables.feature_names(), predicted)


def _learned_size(model: Candidate) -> dict[str, int]:
    """What a candidate learned about its own size (LightGBM: its boosting rounds), for the metadata."""
    rounds = getattr(model, "rounds", None)
    return {} if rounds is None else {"rounds": int(rounds)}


def _size_note(model: Candidate) -> str:
    return "".join(f", {v} {k}" for k, v in _learned_size(model).items())


def _refit(everything: Baskets, classes: Sequence[str], chosen: str, config: TrainConfig,
           say: Progress) -> tuple[FeatureTables, bytes, float, dict[str, int]]:
    say(f"refitting {chosen} on all {everything.lines.n_baskets:,} baskets …")
    tables, X, y = _learn(everything, classes, config, say)
    model = next(c for c in candidates(config.seed, config.threads) if c.name == chosen)
    model.fit(X, y, len(classes))
    onnx_bytes = model.to_onnx(X.shape[1])
    if onnx_bytes is None:
        raise RuntimeError(f"{chosen} cannot be exported to ONNX")
    parity = _check_parity(model, onnx_bytes, X)
    say(f"ONNX export checked: max |p_onnx - p_native| = {parity:.2e}{_size_note(model)}")
    return tables, onnx_bytes, parity, _learned_size(model)


def _sample(n_baskets: int, config: TrainConfig) -> np.ndarray | None:
    """Which baskets the classifiers see (a mask), or None for all."""
    if n_baskets <= config.max_model_baskets:
        return None
    keep = np.zeros(n_baskets, dtype=bool)
    keep[np.random.default_rng(config.seed).choice(n_baskets, config.max_model_baskets, replace=False)] = True
    return keep


def _check_parity(model: Candidate, onnx_bytes: bytes, X: np.ndarray) -> float:
    import onnxruntime as ort

    sample = X[np.random.default_rng(0).choice(X.shape[0], min(X.shape[0], 50_000), replace=False)]
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    onnx_p = session.run([probability_output(session)], {session.get_inputs()[0].name: sample.astype(np.float32)})[0]
    diff = float(np.abs(np.asarray(onnx_p, dtype=np.float64) - model.predict_proba(sample)).max())
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX Runtime differs from the native model by {diff:.2e} (> {PARITY_TOLERANCE})")
    return diff


def _example_products(baskets: Baskets, tables: FeatureTables, limit: int = 40) -> list[dict[str, Any]]:
    """The best-known products with a typical unit price and their hierarchy, for people trying the API."""
    lines = baskets.lines
    products = tables.levels[0]
    evidence = products.counts.sum(axis=1)
    top = np.argsort(-evidence)[: limit * 3]
    rows = np.maximum(products.rows(lines.product, lines.n_lines), 0)
    unit = lines.spend / lines.quantity
    price = np.bincount(rows, weights=unit, minlength=products.vocab.size) / np.maximum(
        np.bincount(rows, minlength=products.vocab.size), 1)
    first = np.full(products.vocab.size, lines.n_lines)
    np.minimum.at(first, rows, np.arange(lines.n_lines))
    shares = products.counts / np.maximum(evidence[:, None], 1e-12)
    out = []
    for r in top:
        best = int(shares[r].argmax())
        hierarchy = [None if h is None or h.index[first[r]] < 0 else str(h.values[h.index[first[r]]])
                     for h in lines.hierarchy]
        out.append({"product_id": str(products.vocab[r]), "price": round(float(price[r]), 2),
                    "hierarchy": hierarchy, "likely_class": tables.classes[best]})
    # A spread of classes makes a better demo than the 40 most common products of one class.
    out.sort(key=lambda e: (e["likely_class"]))
    per_class: dict[str, list[dict[str, Any]]] = {}
    for e in out:
        per_class.setdefault(e["likely_class"], []).append(e)
    mixed = [e for group in zip(*per_class.values(), strict=False) for e in group]
    return (mixed + [e for e in out if e not in mixed])[:limit]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _library_versions() -> dict[str, str]:
    names = ["numpy", "pyarrow", "scikit-learn", "lightgbm", "onnx", "onnxruntime", "skl2onnx", "onnxmltools"]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def _metadata(everything: Baskets, summary: ReadSummary, weeks: np.ndarray, cut: int, classes: Sequence[str],
              chosen: str, learned: dict[str, int], comparison: list[dict[str, Any]], parity: float,
              tables: FeatureTables, config: TrainConfig) -> dict[str, Any]:
    now = datetime.now(UTC)
    digest = hashlib.sha256(tables.to_npz_bytes()).hexdigest()[:8]
    return {
        "model_version": f"{now:%Y%m%d%H%M%S}-{digest}",
        "created_at": now.isoformat(timespec="seconds"),
        "classes": list(classes),
        "chosen_model": chosen,
        "chosen_model_learned": learned,  # e.g. LightGBM's boosting rounds, found on held-out rows
        "training": {
            "files": len(summary.files), "rows": int(everything.lines.n_lines),
            "baskets": int(everything.lines.n_baskets), "products": int(tables.levels[0].vocab.size),
            "weeks": [int(weeks[0]), int(weeks[-1])], "n_weeks": int(weeks.size),
            "validation_weeks": [int(weeks[weeks > cut][0]), int(weeks[-1])],
            "until_week": config.until_week, "n_folds": config.n_folds,
            "evidence_power": config.evidence_power, "prior_strength": config.prior_strength, "seed": config.seed,
            "max_model_baskets": config.max_model_baskets, "threads": config.threads,
        },
        "candidates": comparison,
        "onnx_parity_max_abs_diff": parity,
        "code_version": __version__,
        "git_commit": _git_commit(),
        "libraries": _library_versions(),
        "example_products": _example_products(everything, tables),
    }


def _artifact_files(onnx_bytes: bytes, tables: FeatureTables, meta: dict[str, Any], validation: dict[str, Any],
                    comparison: list[dict[str, Any]]) -> dict[str, bytes]:
    title = f"Validation of {meta['chosen_model']} on weeks {meta['training']['validation_weeks']}"
    metrics = {"chosen": meta["chosen_model"], "validation": validation, "candidates": comparison}
    return {
        "model.onnx": onnx_bytes,
        "tables.npz": tables.to_npz_bytes(),
        "feature_spec.json": tables.spec_json(),
        "metadata.json": json.dumps(meta, indent=2).encode(),
        "metrics.json": json.dumps(metrics, indent=2).encode(),
        "report.md": markdown_report(validation, title=title,
                                     context={"model version": meta["model_version"]}).encode(),
        "confusion_matrix.png": confusion_png(validation, title),
    }

