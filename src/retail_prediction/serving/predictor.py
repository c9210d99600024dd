"""A loaded model: the shared featurization + an ONNX Runtime session. Thread-safe, no training stack."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..artifact import members
from ..artifact.archive import ArtifactError, ArtifactLimits, LoadedArtifact, read_artifact
from ..contract import HIERARCHY_FIELDS, BasketLine, Lines, hierarchy_fields
from ..features.client import client_features
from ..features.explain import explain_clients
from ..features.tables import FEATURE_SPEC_VERSION, FeatureTables, basket_features

REQUIRED_FILES = ("model.onnx", "tables.npz", "feature_spec.json", "metadata.json")


@dataclass(frozen=True)
class Scores:
    """Per basket: class probabilities (columns in `Predictor.classes` order), how many of its lines
    hold a product, or a category / hierarchy code, the model does not know, and its feature row (what the
    drift window bins)."""

    proba: np.ndarray
    unknown_products: np.ndarray
    unknown_categories: np.ndarray
    features: np.ndarray


class Predictor:
    """Featurize + ONNX Runtime. `predict_proba` may be called from many threads at once."""

    def __init__(self, session: ort.InferenceSession, tables: FeatureTables, metadata: Mapping[str, Any],
                 manifest: Mapping[str, Any], sha256: str, profile: members.Profile | None = None):
        self.session = session
        self.profile = profile  # the reference for drift monitoring; None in archives from before it
        self.tables = tables
        self.metadata = dict(metadata)
        self.manifest = dict(manifest)
        self.sha256 = sha256
        self._input = session.get_inputs()[0].name
        self._prob_output = probability_output(session)

    @classmethod
    def from_artifact(cls, artifact: LoadedArtifact, *, intra_op_threads: int = 1,
                      limits: ArtifactLimits | None = None) -> Predictor:
        """Build the predictor from a verified archive; ArtifactError (naming the member) if its content
        cannot be used: JSON of the wrong shape, tables that do not match the spec, a graph ONNX Runtime
        refuses."""
        path, files = artifact.path, artifact.files
        missing = [name for name in REQUIRED_FILES if name not in files]
        if missing:
            raise ArtifactError(f"{path}: model archive lacks {', '.join(missing)}")
        spec = members.feature_spec(path, files, FEATURE_SPEC_VERSION)
        metadata = members.metadata(path, files)
        members.check_npz(path, "tables.npz", files["tables.npz"], limits or ArtifactLimits())
        try:
            tables = FeatureTables.load(spec, files["tables.npz"])
        except (ValueError, KeyError, IndexError, TypeError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ArtifactError(f"{path}: member 'tables.npz' does not fit feature_spec.json: {exc}",
                                "bad_model") from exc
        unserved = set(hierarchy_fields(tables.hierarchy_names)) - set(HIERARCHY_FIELDS)
        if unserved:
            raise ArtifactError(f"{path}: the model uses hierarchy levels a request cannot carry: "
                                f"{', '.join(sorted(unserved))}", "bad_model")
        profile = members.profile(path, files, tables.classes)
        return cls(_session(path, files["model.onnx"], intra_op_threads), tables, metadata, artifact.manifest,
                   artifact.sha256, profile)

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> Predictor:
        return load_predictor(Path(path), **kwargs)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.tables.classes

    @cached_property
    def version(self) -> str:  # read on every request
        return str(self.metadata.get("model_version") or self.sha256[:12])

    @property
    def feature_names(self) -> list[str]:
        return self.tables.feature_names()

    @property
    def hierarchy_levels(self) -> int:
        return len(self.tables.hierarchy_names)

    def features(self, lines: Lines) -> np.ndarray:
        return basket_features(lines, self.tables)

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        out = self.session.run([self._prob_output], {self._input: features.astype(np.float32, copy=False)})[0]
        return np.asarray(out, dtype=np.float64)

    def predict_proba(self, lines: Lines) -> np.ndarray:
        """(n_baskets, n_classes) probabilities, columns in `classes` order."""
        if lines.n_baskets == 0:
            return np.zeros((0, len(self.classes)))
        return self.predict_features(self.features(lines))

    def score(self, baskets: Sequence[Mapping[str, Any] | Sequence[Any]]) -> Scores:
        """Probabilities and unknown-code counts of client baskets (as `encode_clients` takes them)."""
        if not baskets:
            empty = np.zeros(0, dtype=np.int64)
            return Scores(np.zeros((0, len(self.classes))), empty, empty,
                          np.zeros((0, self.tables.n_features), dtype=np.float32))
        features, unknown = client_features(baskets, self.tables)
        return Scores(self.predict_features(features), unknown[:, 0], unknown[:, 1], features)

    def explain(self, baskets: Sequence[Mapping[str, Any] | Sequence[Any]],
                best: Sequence[int]) -> list[dict[str, Any]]:
        """Per basket, why it got class `best[b]` (`features/explain.py`): one compiled pass over its lines, no ONNX."""
        return explain_clients(baskets, best, self.tables)

    def predict_batch(self, lines: Lines, *, threads: int = 2, block: int = 1 << 15) -> np.ndarray:
        """`predict_proba` for many baskets (grouped by basket, as loaded from files), a block of baskets per task.

        Threads overlap the featurization of one block with ONNX Runtime on another; both release the GIL.
        """
        if threads <= 1 or lines.n_baskets <= block or not lines.grouped():
            return self.predict_proba(lines)
        n = lines.n_baskets
        with ThreadPoolExecutor(threads) as pool:
            parts = pool.map(lambda b: self.predict_proba(lines.basket_range(b, min(b + block, n))), range(0, n, block))
            return np.concatenate(list(parts))

    def unknown_products(self, lines: Lines) -> np.ndarray:
        """Per basket: how many lines hold a product the model never saw in training."""
        rows = self.tables.levels[0].rows(lines.product, lines.n_lines)
        return np.bincount(lines.basket[rows < 0], minlength=lines.n_baskets)

    def example_products(self, limit: int = 20) -> list[dict[str, Any]]:
        """Products the model knows best (most evidence), for the web page's picker."""
        examples = self.metadata.get("example_products", [])
        return list(examples[:limit])


def _session(path: Path, onnx: bytes, intra_op_threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # One request is tiny: threads would cost more in handoff than they save.
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types, not all RuntimeErrors
        raise ArtifactError(f"{path}: member 'model.onnx' is refused by ONNX Runtime: {exc}", "bad_model") from exc
    if not session.get_inputs() or not session.get_outputs():
        raise ArtifactError(f"{path}: member 'model.onnx' has no input or no output", "bad_model")
    return session


def warm_up(predictor: Predictor, path: Path | None = None) -> None:
    """Run real predictions once, through the API's own path (the first ONNX run allocates; the code
    dictionaries and the compiled loops' tables are built), and check the answers are probabilities."""
    where = f"{path or predictor.sha256[:12]}: member 'model.onnx'"
    examples = predictor.example_products(8)
    basket = [BasketLine.of(e["product_id"], 1.0, float(e.get("price") or 1.0), None, e.get("hierarchy") or ())
              for e in examples]
    baskets = [basket or [BasketLine("__warmup__", 1.0, 1.0)], [BasketLine("__warmup__", 2.0, 3.5, "unknown")]]
    try:
        predictor.score(baskets[:1])  # one request's path
        proba = predictor.score(baskets * 32).proba
    except Exception as exc:  # onnxruntime's own types: a graph whose inputs do not fit the features
        raise ArtifactError(f"{where} fails on real features: {exc}", "bad_model") from exc
    if proba.shape != (64, len(predictor.classes)) or not np.all(np.isfinite(proba)):
        raise ArtifactError(f"{where}: warm-up gave malformed probabilities (shape {proba.shape})", "bad_model")
    if not np.allclose(proba.sum(axis=1), 1.0, atol=1e-3):
        raise ArtifactError(f"{where}: warm-up probabilities do not sum to 1", "bad_model")


def load_predictor(path: Path, *, limits: ArtifactLimits | None = None, expected_sha256: str | None = None,
                   intra_op_threads: int = 1) -> Predictor:
    """Read, verify, build and warm up a model: the one validation the server, `inspect`, `predict` and
    `evaluate` share, so they accept and refuse the same archives for the same reason (ArtifactError)."""
    limits = limits or ArtifactLimits()
    artifact = read_artifact(path, limits=limits, required=REQUIRED_FILES, expected_sha256=expected_sha256)
    predictor = Predictor.from_artifact(artifact, intra_op_threads=intra_op_threads, limits=limits)
    warm_up(predictor, path)
    return predictor


def probability_output(session: ort.InferenceSession) -> str:
    """The name of the graph's class-probability output (converters name it 'probabilities' or
    'output_probability'; else the last output)."""
    for out in session.get_outputs():
        if "prob" in out.name.lower():
            return out.name
    return session.get_outputs()[-1].name

