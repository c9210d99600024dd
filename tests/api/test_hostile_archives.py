"""Hostile model archives and an unhealthy source, against the real server process over real sockets:
every refusal says why in /ready, /metrics and one JSON log line, memory stays bounded, a refused version
is not fetched again, and the loader keeps going until a good archive appears."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from archives import big_json, edit_json, replace_members, zero_bomb
from retail_prediction.api.schemas import EXAMPLE_REQUEST
from retail_prediction.serving import model_manager
from s3server import MODELS_BUCKET, S3Server, subprocess_env

from .conftest import ApiProcess, wait_until

FAST = {"model_retry_initial_seconds": "0.2", "model_retry_max_seconds": "0.5"}
PEAK_RSS_LIMIT = 400 * 1024 * 1024
FETCHES = "retail_prediction_model_fetches_total"
LAST_SUCCESS = "retail_prediction_source_last_success_timestamp_seconds"


def metric(api: ApiProcess, sample: str) -> float:
    """The value of one sample of /metrics (``name`` or ``name{labels}``); 0 when absent."""
    for line in api.http.get("/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def not_ready(api: ApiProcess) -> dict[str, Any]:
    response = api.http.get("/ready")
    assert response.status_code == 503, response.text
    return dict(response.json()["error"]["details"])


def peak_rss(api: ApiProcess) -> int:
    """The server's peak resident set (VmHWM) in bytes."""
    for line in Path(f"/proc/{api.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def wait_refused(api: ApiProcess, reason: str) -> None:
    wait_until(lambda: not_ready(api) == {"state": "failed", "reason": reason}, 30, f"a {reason} refusal")


def refusal_logged(api: ApiProcess, reason: str, *fragments: str) -> None:
    records = [r for r in api.log_records() if r.get("level") == "error" and r.get("reason") == reason]
    assert records, api.log()
    for fragment in fragments:
        assert fragment in records[0]["message"], records[0]


def not_fetched_again(api: ApiProcess, fetches: float) -> None:
    """Probing goes on (the last successful check advances, at 1 s resolution); fetching does not."""
    checked = metric(api, LAST_SUCCESS)
    wait_until(lambda: metric(api, LAST_SUCCESS) > checked, 10, "the source to be probed again")
    assert api.http.get("/health").status_code == 200
    assert metric(api, FETCHES) == fetches


def put_file(target: Path, archive: Path) -> None:
    """Replace ``target`` atomically (a new file: its version, mtime + size, changes)."""
    tmp = target.with_name(f".{uuid.uuid4().hex}")
    shutil.copyfile(archive, tmp)
    os.replace(tmp, target)


def upload(server: S3Server, path: Path, key: str | None = None) -> str:
    key = key or f"hostile/{uuid.uuid4().hex}/model.tar.gz"
    with path.open("rb") as fh:
        server.client().put_object(Bucket=MODELS_BUCKET, Key=key, Body=fh)
    return key


# --------------------------------------------------------------------------------------------------
# Archives: hash-valid, with content the server must refuse

# case -> (member changes, reason, member the message names)
MALFORMED: dict[str, tuple[Callable[[Path], dict[str, Any]], str, str]] = {
    "spec-is-a-list": (lambda m: {"feature_spec_json": []}, "bad_json", "feature_spec.json"),
    "examples-are-an-int": (lambda m: {"metadata_json": edit_json(m, "metadata.json", example_products=5)},
                            "bad_json", "$.example_products"),
    "unknown-spec-version": (lambda m: {"feature_spec_json": edit_json(m, "feature_spec.json",
                                                                       feature_spec_version=99)},
                             "unsupported", "feature spec version 99"),
    "onnx-refused": (lambda m: {"model_onnx": b"not an onnx graph"}, "bad_model", "model.onnx"),
}


@pytest.fixture(scope="session")
def malformed(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("malformed")
    return {case: replace_members(model_path, out / f"{case}.tar.gz", case, **changes(model_path))
            for case, (changes, _, _) in MALFORMED.items()}


@pytest.fixture(scope="session")
def oversized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two 500 MiB members of zeros, and a 400 MiB metadata.json: about 1 MB on disk each."""
    out = tmp_path_factory.mktemp("oversized")
    return {"bomb": zero_bomb(out / "bomb.tar.gz"), "big_json": big_json(out / "big-json.tar.gz")}


# --------------------------------------------------------------------------------------------------
# Start-up


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_refused_at_start_then_a_good_archive_is_taken(
        case: str, malformed: dict[str, Path], model_path: Path, start_api: Callable[..., ApiProcess],
        tmp_path: Path) -> None:  # fmt: skip
    _, reason, fragment = MALFORMED[case]
    target = tmp_path / "model.tar.gz"
    put_file(target, malformed[case])
    api = start_api(model_uri=str(target), **FAST)
    wait_refused(api, reason)
    refusal_logged(api, reason, fragment)
    assert metric(api, f'retail_prediction_model_refusals_total{{reason="{reason}"}}') == 1
    not_fetched_again(api, fetches=1)
    assert not_ready(api)["reason"] == reason

    put_file(target, model_path)
    api.wait_ready()
    assert api.http.post("/predict", json=EXAMPLE_REQUEST).status_code == 200
    assert metric(api, FETCHES) == 2


@pytest.mark.parametrize(("kind", "source"), [("bomb", "file"), ("big_json", "file"), ("bomb", "s3")])
def test_oversized_archive_costs_bounded_memory(
        kind: str, source: str, oversized: dict[str, Path], model_path: Path, s3_server: S3Server,
        start_api: Callable[..., ApiProcess], tmp_path: Path, record_property: Callable[[str, Any], None],
) -> None:  # fmt: skip
    target = tmp_path / "model.tar.gz"
    if source == "s3":
        key = upload(s3_server, oversized[kind])
        api = start_api(subprocess_env(s3_server, s3_server.reader), model_uri=f"s3://{MODELS_BUCKET}/{key}",
                        **FAST)
    else:
        put_file(target, oversized[kind])
        api = start_api(model_uri=str(target), **FAST)
    wait_refused(api, "too_large")
    refusal_logged(api, "too_large", "metadata.json" if kind == "big_json" else "model0.onnx", "limit")
    not_fetched_again(api, fetches=1)
    peak = peak_rss(api)
    record_property("peak_rss_mb", round(peak / 2**20))
    print(f"\n{kind} via {source}: server peak RSS {peak / 2**20:.0f} MiB")
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB"

    if source == "s3":
        upload(s3_server, model_path, key)
    else:
        put_file(target, model_path)
    api.wait_ready()
    assert api.http.get("/health").status_code == 200


def test_an_unforeseen_exception_is_a_refusal_and_the_loader_lives_on(
        make_client: Callable[..., TestClient], model_path: Path, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:  # fmt: skip
    calls: list[Path] = []

    def surprise(path: Path, **kwargs: Any) -> None:
        calls.append(path)
        raise KeyError("nobody foresaw this")

    real = model_manager.load_predictor
    monkeypatch.setattr(model_manager, "load_predictor", surprise)
    target = tmp_path / "model.tar.gz"
    put_file(target, model_path)
    client = make_client(wait_ready=False, model_uri=str(target), model_retry_initial_seconds=0.05,
                         model_retry_max_seconds=0.1)
    failed = {"state": "failed", "reason": "load_error"}
    wait_until(lambda: client.get("/ready").json()["error"]["details"] == failed, 10, "the refusal")
    assert "KeyError" in client.get("/ready").json()["error"]["message"]
    time.sleep(0.5)  # several retries: probed, not loaded again
    assert len(calls) == 1

    monkeypatch.setattr(model_manager, "load_predictor", real)
    put_file(target, model_path)  # a new version of the file
    wait_until(lambda: client.get("/ready").status_code == 200, 30, "the good archive to load")


def test_refusal_is_reported_again_after_the_source_comes_back(
        make_client: Callable[..., TestClient], malformed: dict[str, Path], tmp_path: Path) -> None:  # fmt: skip
    target, aside = tmp_path / "model.tar.gz", tmp_path / "aside.tar.gz"
    put_file(target, malformed["spec-is-a-list"])
    client = make_client(wait_ready=False, model_uri=str(target), model_retry_initial_seconds=0.05,
                         model_retry_max_seconds=0.1)

    def details() -> dict[str, Any]:
        return dict(client.get("/ready").json()["error"]["details"])

    wait_until(lambda: details()["reason"] == "bad_json", 10, "the refusal")
    os.rename(target, aside)  # the source fails: that is what /ready says now
    wait_until(lambda: details()["reason"] == "not_found", 10, "the missing source")
    os.rename(aside, target)  # the same file (same mtime and size): the same refused version
    wait_until(lambda: details()["reason"] == "bad_json", 10, "the refusal again")
    assert f"{FETCHES} 1.0" in client.get("/metrics").text


# --------------------------------------------------------------------------------------------------
# Hot reload


def _info(api: ApiProcess) -> dict[str, Any]:
    return dict(api.http.get("/model/info").json())


def test_reload_refuses_malformed_keeps_serving_and_keeps_polling(
        s3_server: S3Server, start_api: Callable[..., ApiProcess], model_path: Path, model_v2: Path,
        malformed: dict[str, Path]) -> None:  # fmt: skip
    key = upload(s3_server, model_path)
    api = start_api(subprocess_env(s3_server, s3_server.reader), model_uri=f"s3://{MODELS_BUCKET}/{key}",
                    model_poll_seconds="0.3")
    api.wait_ready()
    original = _info(api)["model_version"]

    upload(s3_server, malformed["examples-are-an-int"], key)
    refused = 'retail_prediction_model_refusals_total{reason="bad_json"}'
    wait_until(lambda: metric(api, refused) == 1, 20, "the refused reload in the metrics")
    reload = _info(api)["reload"]
    assert reload["last_reload"]["result"] == "failure" and reload["last_reload"]["reason"] == "bad_json"
    assert "$.example_products" in reload["last_reload"]["message"]
    assert reload["refused_version"] == reload["last_reload"]["version"]
    refusal_logged(api, "bad_json", "metadata.json")
    assert api.http.post("/predict", json=EXAMPLE_REQUEST).json()["model_version"] == original
    not_fetched_again(api, fetches=2)

    upload(s3_server, model_v2, key)
    wait_until(lambda: _info(api)["model_version"] == "test-v2", 20, "the reload to test-v2")
    assert _info(api)["reload"]["refused_version"] is None


# --------------------------------------------------------------------------------------------------
# Source health


def test_source_outage_shows_in_metrics_and_model_info(
        s3_running: S3Server, start_api: Callable[..., ApiProcess], model_path: Path) -> None:  # fmt: skip
    key = upload(s3_running, model_path)
    api = start_api(subprocess_env(s3_running, s3_running.reader), model_uri=f"s3://{MODELS_BUCKET}/{key}",
                    model_poll_seconds="0.3")
    api.wait_ready()
    wait_until(lambda: _info(api)["reload"]["last_check_ok"] is True, 10, "a successful check")
    failures = 'retail_prediction_source_check_failures_total{reason="unreachable"}'
    assert metric(api, failures) == 0

    s3_running.stop()
    try:
        wait_until(lambda: metric(api, failures) >= 2, 60, "failed checks in the metrics")
        wait_until(lambda: _info(api)["reload"]["last_check_at"] > _info(api)["reload"]["last_success_at"], 10,
                   "the last check to be later than the last success")
        reload = _info(api)["reload"]
        assert reload["last_check_ok"] is False
        assert reload["last_error"]["reason"] == "unreachable" and key in reload["last_error"]["message"]
        assert api.http.get("/ready").status_code == 200  # the serving model stays
        assert api.http.get("/health").status_code == 200
        stale = metric(api, LAST_SUCCESS)
    finally:
        s3_running.start()
    wait_until(lambda: _info(api)["reload"]["last_check_ok"] is True, 60, "the source to answer again")
    assert _info(api)["reload"]["last_error"] is None
    assert metric(api, LAST_SUCCESS) > stale
    assert metric(api, "retail_prediction_model_fetches_total") == 1  # unchanged version: never re-fetched
    assert time.time() - metric(api, LAST_SUCCESS) < 30
