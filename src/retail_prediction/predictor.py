"""A loaded model: the shared featurization + an ONNX Runtime session. Thread-safe, no training stack."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort

from . import featurize_kernel
from .artifact import LoadedArtifact, read_artifact
from .features import Codes, Encoded, FeatureTables, Lines, basket_features, encode, encode_strings

REQUIRED_FILES = ("model.onnx", "tables.npz", "feature_spec.json", "metadata.json")


class LineItem(NamedTuple):
    """One basket line as a client sends it: unit price, optional hierarchy codes (a tuple: cheap to build
    for every line of a thousand-basket batch)."""

    product_id: str
    quantity: float
    price: float
    category: str | None = None
    hierarchy: tuple[str | None, ...] = ()


def lines_from_items(baskets: Sequence[Sequence[LineItem]], hierarchy_levels: int) -> Lines:
    """Client baskets -> the flat line table the featurization takes.

    A free-form `category` is offered to every hierarchy level where no explicit code was given: the
    learned vocabularies decide where (if anywhere) it is known.
    """
    return _line_table(baskets, hierarchy_levels)[0]


def encode_items(baskets: Sequence[Sequence[LineItem]], tables: FeatureTables) -> tuple[Lines, Encoded]:
    """`lines_from_items` and its `encode`, with the codes looked up straight from the client's strings."""
    lines, text = _line_table(baskets, len(tables.hierarchy_names))
    return lines, encode_strings(text, tables)


def _line_table(baskets: Sequence[Sequence[LineItem]], hierarchy_levels: int) -> tuple[Lines, list[list[str]]]:
    items = [item for basket in baskets for item in basket]
    if len(baskets) == 1:  # one request: per-call costs dominate, so no grouping arithmetic
        basket = np.zeros(len(items), dtype=np.int32)
    else:
        basket = np.repeat(np.arange(len(baskets), dtype=np.int32), [len(b) for b in baskets])
    amounts = np.array([(i.quantity, i.price) for i in items], dtype=np.float64).reshape(-1, 2)
    # One string matrix (product, then each level) instead of one array per column.
    text = [_codes_of(i, hierarchy_levels) for i in items]
    product, *levels = Codes.from_string_rows(text, 1 + hierarchy_levels)
    quantity = amounts[:, 0]
    lines = Lines(basket=basket, n_baskets=len(baskets), product=product, quantity=quantity,
                  spend=quantity * amounts[:, 1], hierarchy=tuple(levels))
    return lines, text


def _codes_of(item: LineItem, levels: int) -> list[str]:
    """The line's product code, then its code at each hierarchy level ("" = missing)."""
    category = item.category or ""
    hierarchy = item.hierarchy if len(item.hierarchy) == levels else (*item.hierarchy, *(None,) * levels)[:levels]
    return [item.product_id or "", *[code or category for code in hierarchy]]


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
        self._prob_output = _probability_output(session)

    @classmethod
    def from_artifact(cls, artifact: LoadedArtifact, *, intra_op_threads: int = 1) -> Predictor:
        missing = [name for name in REQUIRED_FILES if name not in artifact.files]
        if missing:
            raise ValueError(f"{artifact.path}: model archive lacks {', '.join(missing)}")
        spec = json.loads(artifact.files["feature_spec.json"])
        tables = FeatureTables.load(spec, artifact.files["tables.npz"])
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

    @property
    def version(self) -> str:
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

    def score(self, lines: Lines, enc: Encoded | None = None) -> Scores:
        """Probabilities and unknown-code counts per basket, from one encoding of the lines (`enc`, when
        the caller has it)."""
        n = lines.n_baskets
        if n == 0:
            empty = np.zeros(0, dtype=np.int64)
            return Scores(np.zeros((0, len(self.classes))), empty, empty)
        enc = enc if enc is not None else encode(lines, self.tables)
        proba = self.predict_features(basket_features(lines, self.tables, enc=enc))
        # A category counts as unknown when the client gave one and no hierarchy level knows it.
        named = [codes.index for codes in lines.hierarchy if codes is not None]
        given = np.stack(named).astype(np.int32, copy=False) if named else np.zeros((0, lines.n_lines), np.int32)
        unknown = np.zeros((n, 2), dtype=np.int64)
        featurize_kernel.unknown_codes(enc.level_rows, np.asarray(lines.basket, dtype=np.int32), given, unknown)
        return Scores(proba, unknown[:, 0], unknown[:, 1])

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


def _probability_output(session: ort.InferenceSession) -> str:
    for out in session.get_outputs():
        if "prob" in out.name.lower():
            return out.name
    return session.get_outputs()[-1].name

