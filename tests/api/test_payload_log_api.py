"""The payload log through the API: a real server process samples every request into S3 (SeaweedFS) and
flushes at SIGTERM; a hanging store neither fails nor holds up a request, and shows in /metrics."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from payloads import Blackhole
from retail_prediction.data.requests import sample_baskets
from retail_prediction.serving import payload_log
from s3server import S3Server

from .conftest import ApiProcess

KEY = "the-deployment-hmac-key"


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_a_server_process_logs_sampled_requests_to_s3(start_api: Callable[..., ApiProcess], model_path: Path,
                                                      s3_server: S3Server, s3_env: Callable[..., dict[str, str]],
                                                      weeks: Any) -> None:
    prefix = f"payload-{uuid.uuid4().hex[:8]}"
    api = start_api(env=s3_env(), model_uri=str(model_path), payload_log_sample_rate="1",
                    payload_log_uri=f"s3://models/{prefix}", payload_log_customer_id="hash",
                    payload_log_hash_key=KEY, log_format="json")
    api.wait_ready()
    bodies = [{**body, "customer_id": f"CUST{i:06d}"} for i, body in enumerate(sample_baskets(weeks.later[0], 6))]
    single = api.http.post("/predict", json=bodies[0], headers={"X-Request-ID": "one-basket"}).json()
    batch = api.http.post("/predict/batch", json={"baskets": bodies[1:]}).json()
    info = api.http.get("/model/info").json()["payload_log"]
    assert info == {"enabled": True, "sample_rate": 1.0, "uri": f"s3://models/{prefix}", "customer_id": "hash"}
    assert api.terminate() == 0  # the drain flushes the queued records

    client = s3_server.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="models", Prefix=prefix).get("Contents", [])]
    assert keys and all(k.startswith(f"{prefix}/dt=") and "/hour=" in k and k.endswith(".jsonl.gz") for k in keys)
    records = [json.loads(line) for key in sorted(keys)
               for line in gzip.decompress(client.get_object(Bucket="models", Key=key)["Body"].read()).splitlines()]
    by_request = {(r["request_id"], r.get("index")): r for r in records}
    assert len(records) == len(bodies) == len(by_request)
    first = by_request[("one-basket", None)]
    assert first["route"] == "/predict" and first["model_version"] == single["model_version"]
    assert first["answer"]["probabilities"] == single["probabilities"] and first["latency_ms"] > 0
    assert first["customer_id_hmac"] == hmac.new(KEY.encode(), bodies[0]["customer_id"].encode(),
                                                 hashlib.sha256).hexdigest()
    for i, (body, answer) in enumerate(zip(bodies[1:], batch["predictions"], strict=True)):
        record = by_request[(batch["request_id"], i)]
        assert record["answer"]["label"] == answer["label"] and record["route"] == "/predict/batch"
        assert [line["product_id"] for line in record["basket"]["basket_items"]] == [
            line["product_id"] for line in body["basket_items"]]
    assert not any(body["customer_id"] in json.dumps(records) for body in bodies)
    assert any("payload log on" in r.get("message", "") for r in api.log_records())


def test_a_hanging_store_fails_no_request(make_client: Callable[..., TestClient], model_path: Path,
                                          s3_use_identity: Callable[..., None], monkeypatch: pytest.MonkeyPatch,
                                          weeks: Any) -> None:
    s3_use_identity()
    hole = Blackhole()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", hole.endpoint)
    monkeypatch.setattr(payload_log, "S3_TIMEOUTS", {"connect_timeout": 5, "read_timeout": 60, "max_attempts": 1})
    bodies = sample_baskets(weeks.later[0], 50)
    try:
        client = make_client(model_uri=str(model_path), payload_log_sample_rate=1.0,
                             payload_log_uri="s3://models/payload-hang", payload_log_part_bytes=1024,
                             payload_log_queue_records=10)
        sent = 0
        while not hole.held:  # until the writer is inside a write that will not come back
            assert client.post("/predict", json=bodies[sent % len(bodies)]).status_code == 200
            sent += 1
        for body in bodies:  # with the writer stuck, every request is still answered
            assert client.post("/predict", json=body).status_code == 200
        metrics = client.get("/metrics").text
        assert _metric(metrics, 'retail_prediction_payload_log_records_total{outcome="dropped"}') >= 40
        assert _metric(metrics, "retail_prediction_payload_log_queued_records") == 10
        assert _metric(metrics, 'retail_prediction_payload_log_records_total{outcome="written"}') == 0
    finally:
        hole.close()  # the stuck write is reset; the shutdown's last attempt is refused
