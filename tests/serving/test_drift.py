"""Drift monitoring's parts: the PSI, the reference profile training writes, its checks at load, and the
rolling window the server keeps (latest baskets only, many threads at once, same figures as in bulk)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from retail_prediction.artifact.archive import ArtifactError, pack_artifact, read_artifact
from retail_prediction.artifact.members import FeatureProfile, Profile
from retail_prediction.serving.drift import DriftWindow, bin_counts, profile_psi, psi
from retail_prediction.serving.predictor import Predictor, load_predictor
from retail_prediction.training.profile import PROFILED, bin_edges, reference_profile, shares

RNG = np.random.default_rng(3)
NAMES = ["other", *PROFILED.values()]


def _profile(n: int = 5000) -> tuple[Profile, np.ndarray]:
    features = np.column_stack([RNG.normal(size=n), RNG.integers(1, 30, n), RNG.normal(3, 1, n),
                                RNG.normal(0.8, 0.2, n), np.where(RNG.random(n) < 0.9, 0.0, RNG.random(n))])
    predicted = RNG.choice(4, size=n, p=[0.2, 0.5, 0.25, 0.05])
    raw = reference_profile(features, NAMES, predicted, ["LA", "MM", "UM", "XX"], [200601, 200602])
    return Profile(**{**raw, "features": {k: FeatureProfile(**v) for k, v in raw["features"].items()}}), features


def test_psi_reads_zero_for_the_same_mix_and_large_for_a_shift() -> None:
    assert psi([0.25] * 4, np.array([25, 25, 25, 25])) == pytest.approx(0.0)
    assert psi([0.25] * 4, np.array([0, 0, 0, 0])) == 0.0  # nothing seen yet: no drift claimed
    assert psi([0.25] * 4, np.array([70, 10, 10, 10])) > 0.25
    assert 0.0 < psi([0.25] * 4, np.array([30, 20, 25, 25])) < 0.1
    assert np.isfinite(psi([1.0, 0.0], np.array([0, 10])))  # an empty reference bin stays finite


def test_bins_cover_everything_and_an_always_zero_column_still_detects_change() -> None:
    values = np.zeros(1000)
    edges = bin_edges(values)
    assert shares(edges, values)[-1] == 0.0 and sum(shares(edges, values)) == pytest.approx(1.0)
    feature = FeatureProfile("x", edges, shares(edges, values))
    assert psi(feature.shares, bin_counts(feature, np.zeros(100))) == pytest.approx(0.0)
    assert psi(feature.shares, bin_counts(feature, np.full(100, 0.4))) > 0.25
    assert bin_counts(feature, np.array([np.nan, -1.0, 5.0])).sum() == 3


def test_reference_profile_is_deciles_and_the_predicted_mix() -> None:
    profile, features = _profile()
    assert set(profile.features) == {"lines", "spend", "mean_unit_price", "unknown_share"}
    spend = profile.features["spend"]
    assert spend.column == "log_spend" and len(spend.shares) == len(spend.edges) + 1
    inner = spend.shares[1:-1]  # deciles: ten bins of a tenth each between the extremes
    assert len(inner) == 10 and max(abs(s - 0.1) for s in inner) < 0.01
    assert sum(profile.class_shares) == pytest.approx(1.0) and profile.class_shares[1] == pytest.approx(0.5, abs=0.03)
    same = profile_psi(profile, NAMES, features, RNG.choice(4, size=len(features), p=[0.2, 0.5, 0.25, 0.05]))
    assert max(same.input.values()) < 0.01 and same.prediction < 0.01


def test_window_keeps_the_latest_baskets_and_matches_the_bulk_figures() -> None:
    profile, features = _profile()
    window = DriftWindow(profile, NAMES, size=1000)
    assert window.snapshot().baskets == 0
    shifted = features.copy()
    shifted[:, NAMES.index("log_spend")] += 2.0
    predicted = np.zeros(len(features), dtype=np.int64)
    for start in range(0, 3000, 7):  # old traffic, then shifted traffic in uneven calls
        window.observe(features[start:start + 7].astype(np.float32), predicted[start:start + 7])
    for start in range(0, 1200, 1):
        window.observe(shifted[start:start + 1].astype(np.float32), predicted[start:start + 1])
    snap = window.snapshot()
    expected = profile_psi(profile, NAMES, shifted[200:1200].astype(np.float32), predicted[:1000])
    assert snap.baskets == 1000
    assert snap.input == pytest.approx(expected.input) and snap.prediction == pytest.approx(expected.prediction)
    assert snap.input["spend"] > 0.25 and snap.input["lines"] < 0.1


def test_window_counts_every_basket_from_many_threads() -> None:
    profile, features = _profile()
    window = DriftWindow(profile, NAMES, size=100_000)
    rows = features[:1].astype(np.float32)

    def send() -> None:
        for _ in range(5000):
            window.observe(rows, np.zeros(1, dtype=np.int64))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert window.snapshot().baskets == 40_000


def test_window_memory_stays_bounded_while_nobody_scrapes() -> None:
    profile, features = _profile()
    window = DriftWindow(profile, NAMES, size=500)
    for _ in range(2000):
        window.observe(features[:3].astype(np.float32), np.zeros(3, dtype=np.int64))
        assert len(window._pending) <= 500  # folded once a window's worth is pending
    assert window.snapshot().baskets == 500


# --------------------------------------------------------------------------------------------------
# In the artifact


def test_training_writes_a_profile_the_predictor_reads(trained_model: Path) -> None:
    predictor = Predictor.load(trained_model)
    profile = predictor.profile
    assert profile is not None and tuple(profile.classes) == predictor.classes
    assert profile.baskets > 100 and len(profile.weeks) == 2  # the two held-out weeks
    for feature in profile.features.values():
        assert feature.column in predictor.feature_names


def _rewrite(source: Path, dest: Path, change: dict[str, bytes | None]) -> Path:
    files = dict(read_artifact(source).files)
    for name, data in change.items():
        if data is None:
            files.pop(name, None)
        else:
            files[name] = data
    pack_artifact(dest, files, metadata={"model_version": "rewritten"})
    return dest


def test_archives_without_a_profile_still_load(trained_model: Path, tmp_path: Path) -> None:
    old = _rewrite(trained_model, tmp_path / "old.tar.gz", {"profile.json": None})
    predictor = load_predictor(old)
    assert predictor.profile is None
    assert DriftWindow.for_model(predictor.profile, predictor.feature_names, 2000) is None


@pytest.mark.parametrize(("edit", "says"), [
    (lambda p: p["features"]["spend"].update(edges=[2.0, 1.0], shares=[0.2, 0.3, 0.5]), "strictly ascending"),
    (lambda p: p["features"]["lines"].update(shares=[1.0]), "shares for"),
    (lambda p: p.update(classes=["A", "B"]), "are not the model's"),
    (lambda p: p.update(class_shares=[0.9, 0.9, 0.1, 0.1][: len(p["classes"])]), "sum to 1"),
    (lambda p: p.update(version=99), "version 99"),
    (lambda p: p["features"].update(spend="many"), "does not match its schema"),
])
def test_a_bad_profile_is_refused_with_its_reason(trained_model: Path, tmp_path: Path, edit, says: str) -> None:
    profile = json.loads(read_artifact(trained_model).files["profile.json"])
    edit(profile)
    bad = _rewrite(trained_model, tmp_path / "bad.tar.gz", {"profile.json": json.dumps(profile).encode()})
    with pytest.raises(ArtifactError, match=r"profile\.json") as refused:
        load_predictor(bad)
    assert says in str(refused.value)
