"""Shadow scoring in a live app: answers always come from the serving model; the shadow scores the sampled
baskets afterwards and its comparison (agreement, answered-vs-shadow table) equals what the two models say
offline; a full queue, a missing or failing shadow only count drops; the shadow hot-reloads."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from retail_prediction.data.requests import sample_baskets
from retail_prediction.serving.predictor import Predictor
from retail_prediction.training.train import TrainConfig, train

from .conftest import metric_samples, repack, wait_until

N = 300


@pytest.fixture(scope="module")
def bodies(weeks: Any) -> list[dict[str, Any]]:
    return sample_baskets(weeks.later[-1], N, seed=5)


@pytest.fixture(scope="module")
def other_model(weeks: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A genuinely different model: trained on the first three generated weeks only."""
    return train(weeks.train[:3], tmp_path_factory.mktemp("other") / "model.tar.gz",
                 TrainConfig(validation_weeks=1, seed=1)).path


def _series(client: TestClient) -> dict[str, float]:
    return metric_samples(client, "retail_prediction_shadow")


def _offline_labels(bodies: list[dict[str, Any]], client: TestClient) -> list[str]:
    """What the model `client` serves says of the baskets, through its own app (no shadow)."""
    return [client.post("/predict", json=b).json()["label"] for b in bodies]


def test_shadow_never_answers_and_its_comparison_is_exact(
        make_client: Callable[..., TestClient], model_path: Path, other_model: Path,
        bodies: list[dict[str, Any]]) -> None:
    plain = make_client(model_uri=str(model_path))
    alone = make_client(model_uri=str(other_model))
    client = make_client(model_uri=str(model_path), shadow_model_uri=str(other_model))
    wait_until(lambda: client.get("/model/info").json()["shadow"]["state"] == "ready", 30, "the shadow to load")
    answered = []
    for body in bodies:
        with_shadow = client.post("/predict", json=body).json()
        without = plain.post("/predict", json=body).json()
        assert with_shadow["probabilities"] == without["probabilities"]
        assert with_shadow["model_version"] == without["model_version"]
        answered.append(with_shadow["label"])
    shadow_says = _offline_labels(bodies, alone)
    wait_until(lambda: _series(client).get("retail_prediction_shadow_scored_baskets_total") == N, 30,
               "the shadow to score every basket")
    series = _series(client)
    agreement = sum(a == s for a, s in zip(answered, shadow_says, strict=True)) / N
    assert series["retail_prediction_shadow_agreement_ratio"] == pytest.approx(agreement)
    for a, s in set(zip(answered, shadow_says, strict=True)):
        expected = sum(1 for pair in zip(answered, shadow_says, strict=True) if pair == (a, s))
        assert series[f"retail_prediction_shadow_predictions_total[{a}][{s}]"] == expected
    assert series["retail_prediction_shadow_model_ready"] == 1
    info = client.get("/model/info").json()
    shadow_version = Predictor.load(other_model).version
    assert info["shadow"]["model_version"] == shadow_version != info["model_version"]
    assert info["shadow"]["scored_baskets"] == N
    assert info["shadow"]["agreement_ratio"] == pytest.approx(agreement, abs=1e-4)


def test_a_full_queue_drops_and_counts(make_client: Callable[..., TestClient], model_path: Path,
                                       bodies: list[dict[str, Any]]) -> None:
    client = make_client(model_uri=str(model_path), shadow_model_uri=str(model_path), shadow_queue_baskets=10)
    wait_until(lambda: client.get("/model/info").json()["shadow"]["state"] == "ready", 30, "the shadow to load")
    response = client.post("/predict/batch", json={"baskets": bodies[:50]})
    assert response.status_code == 200 and len(response.json()["predictions"]) == 50
    series = _series(client)
    assert series["retail_prediction_shadow_dropped_baskets_total[queue_full]"] == 50


def test_sampling_rate_zero_scores_nothing(make_client: Callable[..., TestClient], model_path: Path,
                                           bodies: list[dict[str, Any]]) -> None:
    client = make_client(model_uri=str(model_path), shadow_model_uri=str(model_path), shadow_sample_rate=0.0)
    for body in bodies[:20]:
        assert client.post("/predict", json=body).status_code == 200
    assert _series(client).get("retail_prediction_shadow_scored_baskets_total", 0) == 0


def test_a_missing_shadow_never_touches_the_answers(make_client: Callable[..., TestClient], model_path: Path,
                                                    tmp_path: Path, bodies: list[dict[str, Any]]) -> None:
    client = make_client(model_uri=str(model_path), shadow_model_uri=str(tmp_path / "nothing.tar.gz"))
    for body in bodies[:20]:
        assert client.post("/predict", json=body).status_code == 200
    assert client.get("/ready").status_code == 200  # the shadow never gates readiness
    wait_until(lambda: _series(client).get("retail_prediction_shadow_dropped_baskets_total[not_ready]") == 20, 10,
               "the not-ready drops to be counted")
    info = client.get("/model/info").json()["shadow"]
    assert info["state"] == "failed" and info["model_version"] is None and info["reason"] == "not_found"


def test_the_shadow_hot_reloads(make_client: Callable[..., TestClient], model_path: Path, tmp_path: Path,
                                bodies: list[dict[str, Any]]) -> None:
    slot = tmp_path / "shadow" / "model.tar.gz"
    slot.parent.mkdir()
    shutil.copy(model_path, slot)
    client = make_client(model_uri=str(model_path), shadow_model_uri=str(slot), model_poll_seconds=0.2)
    wait_until(lambda: client.get("/model/info").json()["shadow"]["state"] == "ready", 30, "the shadow to load")
    repack(model_path, tmp_path / "v2.tar.gz", "shadow-v2")
    shutil.move(tmp_path / "v2.tar.gz", slot)
    wait_until(lambda: client.get("/model/info").json()["shadow"]["model_version"] == "shadow-v2", 30,
               "the shadow to reload")
    assert client.get("/model/info").json()["model_version"] != "shadow-v2"  # the serving model stays
    assert _series(client)["retail_prediction_shadow_model_loads_total[reload][success]"] == 1
