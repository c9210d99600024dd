"""A loaded model: the shared featurization + an ONNX Runtime session. Thread-safe, no training stack."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..artifact.archive import LoadedArtifact, read_artifact
from ..contract import HIERARCHY_FIELDS, Lines, hierarchy_fields
from ..features.client import client_features
from ..features.tables import FeatureTables, basket_features

REQUIRED_FILES = ("model.onnx", "tables.npz", "feature_spec.json", "metadata.json")


@dataclass(frozen=True)
class Scores:
    """Per basket: class probabilities (columns in `Predictor.classes` order) and how many of its lines
    hold a product, or a category / hierarchy code, the model does not know."""

    proba: np.ndarray
    unknown_products: np.ndarray
    unknown_categories: np.ndarray


class Predictor:
    """Featurize + ONNX Runtime. `predict_proba` may be called from many threads at once."""

    def __init__(self, session: ort.InferenceSession, tables: FeatureTables, metadata: Mapping[str, Any],
                 manifest: Mapping[str, Any], sha256: str):
        self.session = session
        self.tables = tables
        self.metadata = dict(metadata)
        self.manifest = dict(manifest)
        self.sha256 = sha256
        self._input = session.get_inputs()[0].name
        self._prob_output = probability_output(session)

    @classmethod
    def from_artifact(cls, artifact: LoadedArtifact, *, intra_op_threads: int = 1) -> Predictor:
        missing = [name for name in REQUIRED_FILES if name not in artifact.files]
        if missing:
            raise ValueError(f"{artifact.path}: model archive lacks {', '.join(missing)}")
        spec = json.loads(artifact.files["feature_spec.json"])
        tables = FeatureTables.load(spec, artifact.files["tables.npz"])
        unserved = set(hierarchy_fields(tables.hierarchy_names)) - set(HIERARCHY_FIELDS)
        if unserved:
            raise ValueError(f"{artifact.path}: the model uses hierarchy levels a request cannot carry: "
                             f"{', '.join(sorted(unserved))}")
        options = ort.SessionOptions()
        # One request is tiny: threads would cost more in handoff than they save.
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(artifact.files["model.onnx"], options, providers=["CPUExecutionProvider"])
        metadata = json.loads(artifact.files["metadata.json"])
        return cls(session, tables, metadata, artifact.manifest, artifact.sha256)

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> Predictor:
        return cls.from_artifact(read_artifact(Path(path), required=REQUIRED_FILES), **kwargs)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.tables.classes

    @cached_property
    def version(self) -> str:  # read on every request
        return str(self.metadata.get("model_version", self.sha256[:12]))

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
            return Scores(np.zeros((0, len(self.classes))), empty, empty)
        features, unknown = client_features(baskets, self.tables)
        return Scores(self.predict_features(features), unknown[:, 0], unknown[:, 1])

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


def probability_output(session: ort.InferenceSession) -> str:
    """The name of the graph's class-probability output (converters name it 'probabilities' or
    'output_probability'; else the last output)."""
    for out in session.get_outputs():
        if "prob" in out.name.lower():
            return out.name
    return session.get_outputs()[-1].name

