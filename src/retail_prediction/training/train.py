"""Learn tables + fit candidates, choose by macro-F1 on the latest weeks, refit, export, pack.

Validation is by time: the latest weeks of the given data are held out, never random rows, so the
figures say how the model does on weeks it has not seen. The chosen candidate is then refit on all
weeks and exported to ONNX, and ONNX Runtime must reproduce its probabilities.

Training streams: the files are read once into compact chunks on disk (`stream.py`, `spill.py`), and the
tables, latent classes and features come from passes over those chunks (`accumulate.py`); memory holds the
per-code state, a few chunks and bounded samples of baskets (`budget.py`), not the lines.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from threadpoolctl import threadpool_limits

from ..artifact.archive import pack_artifact
from ..contract import LABELS
from ..cpus import cpu_budget
from ..data.reading import DataError, Progress, resolve_files
from ..features.tables import FeatureTables
from ..serving.predictor import probability_output
from . import accumulate
from .budget import Limits, limits
from .candidates import Candidate, candidates
from .evaluation import classification_metrics
from .metadata import ProductFacts, artifact_files, example_products, metadata
from .profile import reference_profile
from .spill import Spill
from .stream import TRAIN_COLUMNS, Spilled, spill_files

__all__ = ["TRAIN_COLUMNS", "TrainConfig", "TrainResult", "ordered_files", "train", "validation_cut"]
PARITY_TOLERANCE = 1e-5
_VALIDATION_SALT = 0x7A11


@dataclass(frozen=True)
class TrainConfig:
    until_week: int | None = None
    validation_weeks: int = 13
    n_folds: int = 10
    evidence_power: float = 2.0
    prior_strength: float = 1.0
    seed: int = 0
    # The classifiers see at most this many baskets (a seeded sample); the tables always learn from every
    # line. 43 features need far fewer rows than the tables' products do. Lowered to fit `memory_budget_gb`.
    max_model_baskets: int = 2_000_000
    # Held-out baskets whose features are kept for the metrics and the drift profile (a seeded sample beyond).
    max_validation_baskets: int = 1_000_000
    # Peak memory the run plans for (GB): bounds the samples above; the default fits an 8 GB pod.
    memory_budget_gb: float = 6.0
    # Where the compact copy of the lines goes while training runs (default: the system's temp folder).
    spill_dir: str | None = None
    # Threads for every pool of the run (Arrow, BLAS, LightGBM's OpenMP, the passes over chunks); 0 = the
    # CPUs this process may use.
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
    files = ordered_files(data)
    with tempfile.TemporaryDirectory(prefix="retail-train-", dir=config.spill_dir) as tmp:
        spilled = spill_files(files, Spill(Path(tmp)), config.until_week, config.threads, say)
        weeks = np.array(sorted(spilled.weeks))
        if weeks.size < 2:
            raise DataError(", ".join(spilled.files), f"need at least 2 shop weeks to validate on later weeks, "
                            f"found {weeks.size}")
        cut = validation_cut(weeks, config)
        bounds = limits(spilled, config.n_folds, config.threads, config.memory_budget_gb, config.max_model_baskets,
                        config.max_validation_baskets)
        for note in bounds.notes:
            say(note)
        say(f"{spilled.n_lines:,} lines, {spilled.n_baskets:,} baskets, weeks {weeks[0]}-{weeks[-1]}; validating "
            f"on the last {int((weeks > cut).sum())} weeks (> {cut})")
        classes = tuple(LABELS[i] for i in sorted(spilled.labels))
        comparison, val_detail, reference = _compare(spilled, cut, classes, config, bounds, say)
        chosen = max((c for c in comparison if c["exportable"]), key=lambda c: c["macro_f1"])["name"]
        features, names, predicted, held_weeks = reference
        profile = reference_profile(features, names, predicted[chosen], classes, held_weeks)
        say(f"chosen: {chosen} (validation macro-F1 {comparison_by(comparison, chosen)['macro_f1']:.4f})")
        everything = accumulate.part(spilled, None, classes, config.n_folds, config.seed, config.threads)
        tables, onnx_bytes, parity, size = _refit(everything, classes, chosen, config, bounds, say)
        training = _training_facts(spilled, weeks, cut, config, bounds, val_detail[chosen])
        meta = metadata(training, list(classes), chosen, size, comparison, parity, tables,
                        example_products(tables, _product_facts(everything)))
    files_out = artifact_files(onnx_bytes, tables, meta, val_detail[chosen], comparison)
    files_out["profile.json"] = json.dumps(profile, indent=1).encode()
    sha = pack_artifact(out, files_out, metadata={"model_version": meta["model_version"]})
    say(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, sha256 {sha[:12]}…)")
    return TrainResult(out, sha, chosen, val_detail[chosen], meta)


def ordered_files(data: str | Path | Sequence[str | Path]) -> list[Path]:
    """The data's files by name: the same files listed in another order give the same chunks, so the same
    model to the last bit."""
    return sorted(resolve_files(data), key=str)


def validation_cut(weeks: np.ndarray, config: TrainConfig) -> int:
    """The last training week of the comparison: the latest `validation_weeks` (at most a quarter) are held out."""
    n_val = min(config.validation_weeks, max(1, weeks.size // 4))
    return int(weeks[-n_val - 1])


def comparison_by(comparison: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(c for c in comparison if c["name"] == name)


def _learn(p: accumulate.Part, classes: Sequence[str], config: TrainConfig, bounds: Limits,
           say: Progress) -> tuple[accumulate.Learned, np.ndarray, np.ndarray, int]:
    """Tables from all the part's baskets; out-of-fold features (no label leaks in) and labels of the baskets
    the classifiers see, a seeded sample of at most `bounds.model_baskets`; and how many baskets the part has."""
    say("learning the tables and latent product classes …")
    learned = accumulate.learn(p, classes, config.evidence_power, config.prior_strength)
    say("features of the sampled training baskets …")
    X, y, n = accumulate.features(p, learned, bounds.model_baskets, out_of_fold=config.n_folds > 1)
    return learned, X, y, n


def _compare(spilled: Spilled, cut: int, classes: Sequence[str], config: TrainConfig, bounds: Limits,
             say: Progress) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]],
                                     tuple[np.ndarray, list[str], dict[str, np.ndarray], list[int]]]:
    """Fit every candidate on the earlier weeks and score it on the held-out ones: the comparison rows, each
    candidate's validation metrics, and (for the drift profile) the held-out feature rows, their column names,
    each candidate's predicted class indexes and the held-out weeks."""
    early = accumulate.part(spilled, cut, classes, config.n_folds, config.seed, config.threads)
    learned, X, y, n_train = _learn(early, classes, config, bounds, say)
    tables = learned.tables
    Xv, yv, n_valid = accumulate.features(early.with_weeks(cut + 1, None), learned, bounds.validation_baskets,
                                          out_of_fold=False, salt=_VALIDATION_SALT)
    unseen = Xv[:, tables.feature_names().index("unseen_product_share")] > 0
    say(f"features: {X.shape[0]:,} training (of {n_train:,}) and {Xv.shape[0]:,} validation (of {n_valid:,}) "
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
    held_weeks = [int(w) for w in sorted(spilled.weeks) if w > cut]
    return comparison, detail, (Xv, tables.feature_names(), predicted, held_weeks)
def _learned_size(model: Candidate) -> dict[str, int]:
    """What a candidate learned about its own size (LightGBM: its boosting rounds), for the metadata."""
    rounds = getattr(model, "rounds", None)
    return {} if rounds is None else {"rounds": int(rounds)}


def _size_note(model: Candidate) -> str:
    return "".join(f", {v} {k}" for k, v in _learned_size(model).items())



def _refit(everything: accumulate.Part, classes: Sequence[str], chosen: str, config: TrainConfig, bounds: Limits,
           say: Progress) -> tuple[FeatureTables, bytes, float, dict[str, int]]:
    say(f"refitting {chosen} on all weeks …")
    learned, X, y, _ = _learn(everything, classes, config, bounds, say)
    model = next(c for c in candidates(config.seed, config.threads) if c.name == chosen)
    model.fit(X, y, len(classes))
    onnx_bytes = model.to_onnx(X.shape[1])
    if onnx_bytes is None:
        raise RuntimeError(f"{chosen} cannot be exported to ONNX")
    parity = _check_parity(model, onnx_bytes, X)
    say(f"ONNX export checked: max |p_onnx - p_native| = {parity:.2e}{_size_note(model)}")
    return learned.tables, onnx_bytes, parity, _learned_size(model)


def _check_parity(model: Candidate, onnx_bytes: bytes, X: np.ndarray) -> float:
    import onnxruntime as ort

    sample = X[np.random.default_rng(0).choice(X.shape[0], min(X.shape[0], 50_000), replace=False)]
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    onnx_p = session.run([probability_output(session)], {session.get_inputs()[0].name: sample.astype(np.float32)})[0]
    diff = float(np.abs(np.asarray(onnx_p, dtype=np.float64) - model.predict_proba(sample)).max())
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX Runtime differs from the native model by {diff:.2e} (> {PARITY_TOLERANCE})")
    return diff


def _product_facts(p: accumulate.Part) -> ProductFacts:
    """Mean unit price and hierarchy codes (of its first line) per product row of the refit's tables."""
    s, ids = p.spilled, p.ids[0]
    price = s.unit_price_sum[ids] / np.maximum(s.product_lines[ids], 1)
    _, _, hierarchy = s.stand_ins.arrays()
    names = [np.array(list(v.id_of), dtype=object) for v in s.vocabs[1:]]
    rows = [[None if g < 0 else str(n[g]) for n, g in zip(names, hierarchy[:, i].tolist(), strict=True)]
            for i in ids.tolist()]
    return ProductFacts(price, rows)


def _training_facts(s: Spilled, weeks: np.ndarray, cut: int, config: TrainConfig, bounds: Limits,
                    validation: dict[str, Any]) -> dict[str, Any]:
    return {
        "files": len(s.files), "rows": int(s.n_lines), "baskets": int(s.n_baskets),
        "products": len(s.vocabs[0].id_of), "weeks": [int(weeks[0]), int(weeks[-1])], "n_weeks": int(weeks.size),
        "validation_weeks": [int(weeks[weeks > cut][0]), int(weeks[-1])],
        "until_week": config.until_week, "n_folds": config.n_folds,
        "evidence_power": config.evidence_power, "prior_strength": config.prior_strength, "seed": config.seed,
        "max_model_baskets": bounds.model_baskets, "threads": config.threads,
        "memory_budget_gb": config.memory_budget_gb,
        # Metrics and the drift profile come from at most this many held-out baskets (a seeded sample beyond).
        "max_validation_baskets": bounds.validation_baskets, "validation_baskets_scored": validation["n_baskets"],
    }
