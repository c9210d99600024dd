"""Candidate classifiers compared by `train`, each able to export itself to ONNX."""

from __future__ import annotations

import re
from typing import Any, Protocol

import numpy as np

ONNX_INPUT = "features"
ONNX_OPSET = 17
ONNX_ML_OPSET = 3
LIGHTGBM_OPSET = 15  # the highest onnxmltools 1.16 converts LightGBM to


class Candidate(Protocol):
    name: str

    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int) -> None: ...
    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...
    def to_onnx(self, n_features: int) -> bytes | None: ...


class MajorityBaseline:
    """Always the most frequent training class, with the training class shares as probabilities."""

    name = "majority"

    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int) -> None:
        self.shares = np.bincount(y, minlength=n_classes) / max(y.size, 1)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.tile(self.shares, (X.shape[0], 1))

    def to_onnx(self, n_features: int) -> bytes | None:
        return None  # a reference point only, never shipped


class LogisticCandidate:
    """Multinomial logistic regression on standardised features."""

    name = "logistic_regression"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.model = make_pipeline(
            StandardScaler(), LogisticRegression(C=1.0, max_iter=500, random_state=self.seed)
        )
        self.model.fit(X.astype(np.float64), y)
        self.n_classes = n_classes

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return _full_proba(
            self.model.predict_proba(X.astype(np.float64)), self.model.classes_, self.n_classes
        )

    def to_onnx(self, n_features: int) -> bytes | None:
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import FloatTensorType

        if len(self.model.classes_) != self.n_classes:
            return None
        clf = self.model.steps[-1][1]
        onx = to_onnx(
            self.model,
            initial_types=[(ONNX_INPUT, FloatTensorType([None, n_features]))],
            options={id(clf): {"zipmap": False}},
            target_opset={"": ONNX_OPSET, "ai.onnx.ml": ONNX_ML_OPSET},
        )
        return _serialized(onx)


class LightGBMCandidate:
    """Gradient-boosted trees (LightGBM), multiclass softmax, with the number of rounds learned.

    Boosting runs on a seeded 90 % of the training rows until the multi-class log loss on the other 10 % has
    not improved for `patience` rounds; the trees are then refit on every row with the best round count. A
    fixed count does not fit every data set: on the real weeks accuracy is flat from ~20 rounds while the
    log loss doubles by 150 (docs/benchmarks.md), and on an earlier feature set 150 rounds diverged.
    """

    name = "lightgbm"
    HOLDOUT_SHARE = 0.1
    MIN_HOLDOUT = 200  # rows: below this the stopping point is noise, so the fixed cap is used

    def __init__(self, seed: int = 0, max_rounds: int = 300, learning_rate: float = 0.15, num_leaves: int = 31,
                 patience: int = 10, threads: int = 1):
        self.seed, self.max_rounds, self.patience = seed, max_rounds, patience
        self.params = dict(learning_rate=learning_rate, num_leaves=num_leaves, random_state=seed, verbose=-1,
                           n_jobs=threads)
        self.rounds = max_rounds

    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int) -> None:
        import lightgbm as lgb

        self.rounds = self._best_rounds(X, y)
        model = lgb.LGBMClassifier(n_estimators=self.rounds, **self.params)
        model.fit(X, y)
        self.classes_ = model.classes_
        self.booster = float32_exact_booster(model.booster_)
        self.n_classes = n_classes

    def _best_rounds(self, X: np.ndarray, y: np.ndarray) -> int:
        import lightgbm as lgb

        held = np.random.default_rng(self.seed).random(y.size) < self.HOLDOUT_SHARE
        # The fit part must hold every class, or the held-out labels would be unknown to it.
        if held.sum() < self.MIN_HOLDOUT or np.unique(y[~held]).size < np.unique(y).size:
            return self.max_rounds
        model = lgb.LGBMClassifier(n_estimators=self.max_rounds, **self.params)
        model.fit(X[~held], y[~held], eval_X=(X[held],), eval_y=(y[held],),
                  callbacks=[lgb.early_stopping(self.patience, first_metric_only=True, verbose=False)])
        return int(model.best_iteration_ or self.max_rounds)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raw = self.booster.predict(X)
        proba = raw if raw.ndim == 2 else np.column_stack([1 - raw, raw])
        return _full_proba(proba, self.classes_, self.n_classes)

    def to_onnx(self, n_features: int) -> bytes | None:
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

        if len(self.classes_) != self.n_classes or self.n_classes < 3:
            return None
        onx = convert_lightgbm(
            self.booster,
            initial_types=[(ONNX_INPUT, FloatTensorType([None, n_features]))],
            zipmap=False,
            target_opset=LIGHTGBM_OPSET,
        )
        return _serialized(onx)


def _serialized(onx: Any) -> bytes:
    """The model's bytes, reproducible: the converters list the opset imports in a set's order (it varies with
    the process's string hashing) and may name the graph at random, so the same trees would give different
    bytes and archive hashes. Imports in domain order, one fixed graph name."""
    onx.graph.name = "retail-prediction"
    imports = sorted(onx.opset_import, key=lambda o: o.domain)
    del onx.opset_import[:]
    onx.opset_import.extend(imports)
    return onx.SerializeToString()


def float32_exact_booster(booster: Any) -> Any:
    """The same trees with every split threshold moved down to the largest float32 not above it.

    The model sees float32 features. LightGBM compares them with float64 thresholds, ONNX Runtime with
    float32 ones, and a threshold rounded *up* to float32 sends the feature value equal to it the other
    way. Moving each threshold down to float32 changes no decision on any float32 input, and makes the
    ONNX export take exactly the same paths through every tree.
    """
    import lightgbm as lgb

    text = re.sub(
        r"^threshold=(.*)$",
        lambda m: "threshold=" + " ".join(_float32_floor(float(v)) for v in m.group(1).split()),
        booster.model_to_string(),
        flags=re.M,
    )
    # Tree byte sizes in the header would no longer match; LightGBM parses trees without them.
    text = re.sub(r"^tree_sizes=.*\n", "", text, flags=re.M)
    return lgb.Booster(model_str=text)


def _float32_floor(value: float) -> str:
    f = np.float32(value)
    if float(f) > value:
        f = np.nextafter(f, np.float32(-np.inf))
    return repr(float(f))


def _full_proba(proba: np.ndarray, seen: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities over all classes, even those missing from the training labels."""
    out = np.zeros((proba.shape[0], n_classes))
    out[:, seen.astype(int)] = proba
    return out


def candidates(seed: int, threads: int = 1) -> list[Candidate]:
    return [MajorityBaseline(), LogisticCandidate(seed), LightGBMCandidate(seed, threads=threads)]
