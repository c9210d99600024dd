"""The API as a real uvicorn process over real sockets, loading from a real S3 server (SeaweedFS):
credentials, outages, tampering, hot reload under load, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from retail_prediction.api.schemas import EXAMPLE_REQUEST
from retail_prediction.artifact.archive import sha256_file
from s3server import MODELS_BUCKET, S3Server, subprocess_env

from .conftest import ApiProcess, wait_until

# Fast retries so the outage tests take seconds, not minutes.
FAST = {"model_retry_initial_seconds": "0.2", "model_retry_max_seconds": "1"}


def upload(server: S3Server, path: Path, key: str | None = None) -> str:
    key = key or f"api-tests/{uuid.uuid4().hex}/model.tar.gz"
    server.client().put_object(Bucket=MODELS_BUCKET, Key=key, Body=path.read_bytes())
    return key


def errors_in_log(api: ApiProcess) -> list[dict[str, Any]]:
    return [r for r in api.log_records() if r.get("level") == "error"]


def test_loads_from_s3_as_the_read_only_identity(s3_server: S3Server, start_api: Callable[..., ApiProcess],
                                                 model_path: Path) -> None:
    key = upload(s3_server, model_path)
    api = start_api(subprocess_env(s3_server, s3_server.reader), model_bucket=MODELS_BUCKET, model_key=key,
                    model_sha256=sha256_file(model_path))
    api.wait_ready()
    info = api.http.get("/model/info").json()
    assert info["source_uri"] == f"s3://{MODELS_BUCKET}/{key}"
    assert info["sha256"] == sha256_file(model_path) and info["sha256_pinned"] is True
    assert api.http.post("/predict", json=EXAMPLE_REQUEST).status_code == 200


def test_web_identity_irsa(s3_server: S3Server, start_api: Callable[..., ApiProcess], model_path: Path,
                           tmp_path: Path) -> None:
    """The IRSA path: no keys, a web-identity token exchanged through STS by boto3's default chain."""
    key = upload(s3_server, model_path)
    token = tmp_path / "token"
    token.write_text(s3_server.oidc.token("system:serviceaccount:retail:api"))  # type: ignore[union-attr]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(s3_server.web_identity_env(token))
    api = start_api(env, model_uri=f"s3://{MODELS_BUCKET}/{key}")
    api.wait_ready()


def test_wrong_credentials_never_ready_with_a_clear_log(
        s3_server: S3Server, start_api: Callable[..., ApiProcess], model_path: Path) -> None:  # fmt: skip
    key = upload(s3_server, model_path)
    env = subprocess_env(s3_server, (s3_server.reader[0], "not-the-secret"))
    api = start_api(env, model_uri=f"s3://{MODELS_BUCKET}/{key}", **FAST)
    wait_until(lambda: len(errors_in_log(api)) >= 2, 20, "two failed load attempts in the log")
    ready = api.http.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["error"]["details"]["reason"] == "bad_credentials"
    first = errors_in_log(api)[0]
    assert first["reason"] == "bad_credentials"
    assert f"s3://{MODELS_BUCKET}/{key}" in first["message"] and "retrying in" in first["message"]
    assert "Traceback" not in api.log()


def test_missing_object_is_reported(s3_server: S3Server, start_api: Callable[..., ApiProcess]) -> None:
    api = start_api(subprocess_env(s3_server, s3_server.reader), model_uri=f"s3://{MODELS_BUCKET}/absent.tar.gz",
                    **FAST)
    wait_until(lambda: bool(errors_in_log(api)), 20, "a failed load in the log")
    assert errors_in_log(api)[0]["reason"] == "not_found"


def test_s3_down_at_start_then_up(s3_running: S3Server, start_api: Callable[..., ApiProcess],
                                  model_path: Path) -> None:
    key = upload(s3_running, model_path)
    s3_running.stop()
    try:
        api = start_api(subprocess_env(s3_running, s3_running.reader), model_uri=f"s3://{MODELS_BUCKET}/{key}",
                        **FAST)
        wait_until(lambda: bool(errors_in_log(api)), 30, "a failed load in the log")
        assert errors_in_log(api)[0]["reason"] == "unreachable"
        assert api.http.get("/ready").status_code == 503
        assert api.http.get("/health").status_code == 200
    finally:
        s3_running.start()
    api.wait_ready(timeout=30)  # same process: it recovered on its own
    assert api.http.post("/predict", json=EXAMPLE_REQUEST).status_code == 200


def test_tampered_artifact_is_never_loaded(s3_server: S3Server, start_api: Callable[..., ApiProcess],
                                           tampered_model: Path) -> None:
    key = upload(s3_server, tampered_model)
    env = subprocess_env(s3_server, s3_server.reader)
    api = start_api(env, model_uri=f"s3://{MODELS_BUCKET}/{key}", **FAST)
    wait_until(lambda: bool(errors_in_log(api)), 20, "a refused artifact in the log")
    assert errors_in_log(api)[0]["reason"] == "bad_archive"
    assert "metadata.json" in errors_in_log(api)[0]["message"]
    assert api.http.get("/ready").status_code == 503


def test_sha256_pin_mismatch_is_refused(start_api: Callable[..., ApiProcess], model_path: Path) -> None:
    api = start_api(model_uri=str(model_path), model_sha256="0" * 64, **FAST)
    wait_until(lambda: bool(errors_in_log(api)), 20, "a refused artifact in the log")
    assert errors_in_log(api)[0]["reason"] == "bad_archive" and "pinned" in errors_in_log(api)[0]["message"]


def _version(api: ApiProcess) -> str:
    return str(api.http.get("/model/info").json()["model_version"])


def test_reload_refuses_tampered_then_takes_a_good_version(
        s3_server: S3Server, start_api: Callable[..., ApiProcess], model_path: Path, model_v2: Path,
        tampered_model: Path) -> None:  # fmt: skip
    key = upload(s3_server, model_path)
    api = start_api(subprocess_env(s3_server, s3_server.reader), model_uri=f"s3://{MODELS_BUCKET}/{key}",
                    model_poll_seconds="0.3")
    api.wait_ready()
    original = _version(api)

    upload(s3_server, tampered_model, key)
    failed_once = 'retail_prediction_model_loads_total{kind="reload",result="failure"} 1.0'
    wait_until(lambda: failed_once in api.http.get("/metrics").text, 20, "the failed reload in the metrics")
    info = api.http.get("/model/info").json()
    assert info["model_version"] == original
    assert info["reload"]["last_reload"]["result"] == "failure"
    assert info["reload"]["last_reload"]["reason"] == "bad_archive"
    assert api.http.post("/predict", json=EXAMPLE_REQUEST).json()["model_version"] == original
    time.sleep(1.0)  # several polls: the same bad version is not fetched again and again
    assert 'result="failure"} 1.0' in api.http.get("/metrics").text

    upload(s3_server, model_v2, key)
    wait_until(lambda: _version(api) == "test-v2", 20, "the reload to version test-v2")
    assert api.http.get("/model/info").json()["reload"]["last_reload"]["result"] == "success"


def _hammer(url: str, stop: threading.Event, results: Counter[str], failures: list[str]) -> None:
    with httpx.Client(base_url=url, timeout=10) as http:
        while not stop.is_set():
            try:
                response = http.post("/predict", json=EXAMPLE_REQUEST)
                if response.status_code == 200:
                    results[response.json()["model_version"]] += 1
                else:
                    failures.append(f"{response.status_code} {response.text}")
            except httpx.HTTPError as exc:
                failures.append(repr(exc))


def test_hot_reload_under_load_has_zero_failures(s3_server: S3Server, start_api: Callable[..., ApiProcess],
                                                 model_path: Path, model_v2: Path) -> None:
    key = upload(s3_server, model_path)
    api = start_api(subprocess_env(s3_server, s3_server.reader), model_uri=f"s3://{MODELS_BUCKET}/{key}",
                    model_poll_seconds="0.2")
    api.wait_ready()
    original = _version(api)
    stop, results, failures = threading.Event(), Counter[str](), []
    threads = [threading.Thread(target=_hammer, args=(api.url, stop, results, failures)) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for path, version in [(model_v2, "test-v2"), (model_path, original), (model_v2, "test-v2")]:
            upload(s3_server, path, key)
            wait_until(lambda v=version: results[v] > 0 and _version(api) == v, 30, f"swap to {version}")
            time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert results[original] > 0 and results["test-v2"] > 0
    text = api.http.get("/metrics").text
    assert 'retail_prediction_model_loads_total{kind="reload",result="success"} 3.0' in text


def test_sigterm_finishes_the_request_in_flight(start_api: Callable[..., ApiProcess],
                                                model_path: Path) -> None:
    api = start_api(model_uri=str(model_path))
    api.wait_ready()
    body = json.dumps(EXAMPLE_REQUEST).encode()
    head = (f"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(head + body[:10])  # the request is now in flight, its body half sent
        time.sleep(1.0)  # let the server parse the headers, even on a busy machine
        api.proc.terminate()
        time.sleep(0.5)
        assert api.proc.poll() is None, "exited with a request in flight"
        with pytest.raises(OSError):  # no longer accepting
            socket.create_connection(("127.0.0.1", api.port), timeout=2).close()
        sock.sendall(body[10:])
        answer = sock.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 200") and "\r\nconnection: close\r\n" in answer.lower(), answer
    # uvicorn alone would re-raise the signal after its graceful shutdown (status 143); serve exits 0.
    assert api.proc.wait(20) == 0
    assert "Traceback" not in api.log()


def test_concurrent_requests_get_their_own_answers(start_api: Callable[..., ApiProcess],
                                                   model_path: Path) -> None:
    """Micro-batching scores concurrent baskets together: each answer must still be its own basket's."""
    api = start_api(model_uri=str(model_path))
    api.wait_ready()
    baskets = [{"basket_items": [{"product_id": f"PRD09{i:05d}", "quantity": 1 + i % 3, "price": 0.5 + i}]}
               for i in range(48)]
    expected = [api.http.post("/predict", json=b).json()["probabilities"] for b in baskets]

    async def fire() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=api.url, timeout=10,
                                     limits=httpx.Limits(max_connections=48)) as http:
            responses = await asyncio.gather(*(http.post("/predict", json=b) for b in baskets))
        return [r.json() for r in responses]

    for _ in range(3):
        answers = asyncio.run(fire())
        for answer, want in zip(answers, expected, strict=True):
            assert answer["probabilities"] == pytest.approx(want, abs=1e-6)
    metrics = api.http.get("/metrics").text
    calls = float(metrics.split("retail_prediction_scoring_batch_baskets_count ")[1].split()[0])
    scored = float(metrics.split("retail_prediction_scoring_batch_baskets_sum ")[1].split()[0])
    assert scored == 48 * 4 and calls < scored, "concurrent requests were never scored together"


def test_several_workers(start_api: Callable[..., ApiProcess], model_path: Path) -> None:
    """WORKERS > 1 takes uvicorn's import-string factory path: each worker builds its app from the env."""
    api = start_api(model_uri=str(model_path), workers="2")

    def fresh_connection_predicts() -> bool:  # a new connection may reach either worker
        with httpx.Client(base_url=api.url, timeout=10) as http:
            return http.post("/predict", json=EXAMPLE_REQUEST).status_code == 200

    for _ in range(4):
        wait_until(fresh_connection_predicts, 30, "a prediction from a ready worker")
    assert api.terminate() == 0
