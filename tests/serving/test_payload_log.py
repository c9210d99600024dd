"""The sampled payload log (serving/payload_log.py) on its own: sampling, what a record keeps of the customer,
parts in a directory and in a real S3 (SeaweedFS), a bounded queue, a failing, stopped or hanging store."""

from __future__ import annotations

import hashlib
import hmac
import random
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from payloads import Blackhole, part_files, read_records
from retail_prediction.contract import Basket, BasketLine
from retail_prediction.serving import payload_log
from retail_prediction.serving.metrics import Metrics
from retail_prediction.serving.payload_log import MAX_PENDING_PARTS, Entry, PayloadLog
from retail_prediction.serving.settings import Settings
from s3server import S3Server

ANSWER = {"label": "MM", "label_name": "Mid market", "probabilities": {"LA": 0.1, "MM": 0.7, "UM": 0.2}}


def basket(customer: str | None = "CUST0001", lines: int = 1) -> Basket:
    return Basket([BasketLine.of(f"PRD{i:07d}", 1 + i, 2.5) for i in range(lines)], customer_id=customer)


def scope(request_id: str = "req-1") -> dict[str, Any]:
    return {"request_id": request_id, "request_started": time.perf_counter(), "path": "/predict"}


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Logs:
    """Factory of PayloadLogs over fresh metrics; every started log is stopped after the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "log"
        self.made: list[PayloadLog] = []

    def __call__(self, **overrides: Any) -> PayloadLog:
        settings = Settings(**{"payload_log_sample_rate": 1.0, "payload_log_uri": str(self.dir), **overrides})
        log = PayloadLog(settings, Metrics(), host="pod-a")
        self.made.append(log)
        return log


@pytest.fixture
def logs(tmp_path: Path) -> Iterator[Logs]:
    made = Logs(tmp_path)
    yield made
    for log in made.made:
        log.stop(timeout=15)


def outcomes(log: PayloadLog) -> dict[str, float]:
    registry = log.metrics.registry
    return {o: registry.get_sample_value("retail_prediction_payload_log_records_total", {"outcome": o}) or 0.0
            for o in ("written", "dropped", "failed")}


def queued(log: PayloadLog) -> float:
    return log.metrics.registry.get_sample_value("retail_prediction_payload_log_queued_records") or 0.0


def sink_failures(log: PayloadLog, reason: str) -> float:
    value = log.metrics.registry.get_sample_value("retail_prediction_payload_log_sink_failures_total",
                                                  {"reason": reason})
    return value or 0.0


# ---- sampling


def test_off_by_default_queues_nothing_and_starts_no_writer(logs: Logs) -> None:
    log = PayloadLog(Settings(), Metrics())
    log.start()
    for i in range(100):
        log.offer(scope(f"r{i}"), "v1", (basket(),), (ANSWER,))
    assert not log.enabled and queued(log) == 0 and log._thread is None


def test_rate_one_logs_every_request(logs: Logs) -> None:
    log = logs()
    log.start()
    for i in range(50):
        log.offer(scope(f"r{i}"), "v1", (basket(),), (ANSWER,))
    log.stop()
    records = read_records(logs.dir)
    assert [r["request_id"] for r in records] == [f"r{i}" for i in range(50)]
    assert outcomes(log) == {"written": 50, "dropped": 0, "failed": 0}


def test_sampling_rate_is_respected(logs: Logs) -> None:
    rate, n = 0.2, 20_000
    log = logs(payload_log_sample_rate=rate, payload_log_queue_records=n, payload_log_queue_lines=n)
    random.seed(15)
    for i in range(n):
        log.offer(scope(f"r{i}"), "v1", (basket(),), (ANSWER,))
    sigma = (n * rate * (1 - rate)) ** 0.5
    assert abs(queued(log) - n * rate) < 5 * sigma


# ---- what a record holds


def test_record_fields_and_customer_id_dropped_by_default(logs: Logs) -> None:
    log = logs()
    log.start()
    log.offer(scope("abc"), "v7", (basket("CUST42", lines=2),), (ANSWER,))
    log.stop()
    (record,) = read_records(logs.dir)
    assert record["request_id"] == "abc" and record["model_version"] == "v7" and record["route"] == "/predict"
    assert record["answer"] == ANSWER and record["latency_ms"] >= 0 and record["time"].endswith("Z")
    assert [line["product_id"] for line in record["basket"]["basket_items"]] == ["PRD0000000", "PRD0000001"]
    assert "CUST42" not in str(record) and "customer_id_hmac" not in record


@pytest.mark.parametrize("key_from", ["setting", "file"])
def test_customer_id_hashed_with_the_key(logs: Logs, tmp_path: Path, key_from: str) -> None:
    key = "a-secret-of-the-deployment"
    if key_from == "file":
        (tmp_path / "key").write_text(key + "\n")
        log = logs(payload_log_customer_id="hash", payload_log_hash_key_file=str(tmp_path / "key"))
    else:
        log = logs(payload_log_customer_id="hash", payload_log_hash_key=key)
    log.start()
    for i, customer in enumerate(["CUST42", "CUST43", "CUST42", None]):
        log.offer(scope(f"r{i}"), "v1", (basket(customer),), (ANSWER,))
    log.stop()
    records = read_records(logs.dir)
    expected = hmac.new(key.encode(), b"CUST42", hashlib.sha256).hexdigest()
    assert [r.get("customer_id_hmac") for r in records][::2] == [expected, expected]
    assert records[1]["customer_id_hmac"] != expected and "customer_id_hmac" not in records[3]
    assert "CUST4" not in str(records)


def test_customer_id_kept_when_asked(logs: Logs) -> None:
    log = logs(payload_log_customer_id="keep")
    log.start()
    log.offer(scope(), "v1", (basket("CUST42"),), (ANSWER,))
    log.stop()
    assert read_records(logs.dir)[0]["basket"]["customer_id"] == "CUST42"


@pytest.mark.parametrize(("settings", "named"), [
    ({"payload_log_sample_rate": 0.5}, "PAYLOAD_LOG_URI"),
    ({"payload_log_customer_id": "hash"}, "PAYLOAD_LOG_HASH_KEY"),
])  # fmt: skip
def test_incomplete_settings_are_refused_by_name(settings: dict[str, Any], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        Settings(**settings)


def test_a_missing_key_file_is_named_at_start(logs: Logs, tmp_path: Path) -> None:
    log = logs(payload_log_customer_id="hash", payload_log_hash_key_file=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match=r"PAYLOAD_LOG_HASH_KEY_FILE=.*nope"):
        log.start()


# ---- parts


def test_parts_by_hour_each_its_own_name(logs: Logs) -> None:
    log = logs(payload_log_part_bytes=1024)
    hour = 3600 * (int(time.time()) // 3600)
    for i in range(40):  # 20 records in each of two hours; parts of about 1 KiB of JSON
        log.enqueue(Entry(hour - 1800 + i * 90, f"r{i}", "/predict", "v1", [basket()], [ANSWER], 0.001))
    log.start()
    log.stop()
    files = part_files(logs.dir)
    hours = {f.parent.name for f in files}
    assert len(hours) == 2 and all(f.parent.parent.name.startswith("dt=") for f in files)
    assert len(files) > 2 and len({f.name for f in files}) == len(files)
    assert all("-pod-a-" in f.name for f in files)
    assert sorted(r["request_id"] for r in read_records(logs.dir)) == sorted(f"r{i}" for i in range(40))


def test_a_batch_is_one_line_per_basket(logs: Logs) -> None:
    log = logs()
    log.start()
    batch_scope = {**scope("b1"), "path": "/predict/batch"}
    log.offer(batch_scope, "v1", [basket("C1"), basket("C2", lines=3)], [ANSWER, {**ANSWER, "label": "UM"}])
    log.stop()
    records = read_records(logs.dir)
    assert [(r["index"], r["answer"]["label"], len(r["basket"]["basket_items"])) for r in records] == [
        (0, "MM", 1), (1, "UM", 3)]
    assert {r["request_id"] for r in records} == {"b1"}


# ---- bounded


def test_a_full_queue_drops_and_counts(logs: Logs) -> None:
    log = logs(payload_log_queue_records=10)  # the writer is not started: nothing leaves the queue
    for i in range(25):
        log.offer(scope(f"r{i}"), "v1", (basket(),), (ANSWER,))
    assert queued(log) == 10 and outcomes(log)["dropped"] == 15
    log.start()
    log.stop()
    assert outcomes(log) == {"written": 10, "dropped": 15, "failed": 0}
    assert [r["request_id"] for r in read_records(logs.dir)] == [f"r{i}" for i in range(10)]


def test_the_queue_is_bounded_in_lines_too(logs: Logs) -> None:
    log = logs(payload_log_queue_lines=10)
    for i in range(5):
        log.offer(scope(f"r{i}"), "v1", (basket(lines=4),), (ANSWER,))
    assert queued(log) == 2 and outcomes(log)["dropped"] == 3


# ---- a failing store


def test_a_failing_directory_counts_failures_with_bounded_memory(logs: Logs, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the log's directory should be")
    log = logs(payload_log_uri=str(blocked), payload_log_part_bytes=1024)
    log.start()
    total = 0
    while outcomes(log)["failed"] == 0:  # parts pile up; beyond MAX_PENDING_PARTS the oldest are given up
        for _ in range(20):
            log.offer(scope(f"r{total}"), "v1", (basket(),), (ANSWER,))
            total += 1
        time.sleep(0.05)
        assert total < 100_000
    assert len(log._pending) <= MAX_PENDING_PARTS and log._thread is not None and log._thread.is_alive()
    assert sink_failures(log, "io") >= 1
    log.stop()
    counted = outcomes(log)
    assert counted["written"] == 0 and counted["failed"] + counted["dropped"] == total


def test_the_writer_retries_until_the_store_is_back(logs: Logs, tmp_path: Path) -> None:
    root = tmp_path / "log"
    root.write_text("in the way")
    log = logs(payload_log_uri=str(root), payload_log_flush_seconds=0.1)
    log.start()
    for i in range(30):
        log.offer(scope(f"r{i}"), "v1", (basket(),), (ANSWER,))
    wait_until(lambda: sink_failures(log, "io") >= 1, "a failed write")
    root.unlink()
    wait_until(lambda: outcomes(log)["written"] == 30, "the parts to be written once the directory can be made")
    assert outcomes(log)["failed"] == 0 and len(read_records(root)) == 30


# ---- S3 (a real SeaweedFS)


def _s3_records(server: S3Server, prefix: str) -> list[dict[str, Any]]:
    import gzip
    import json

    client = server.client()
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="models", Prefix=prefix).get("Contents", []))
    return [json.loads(line) for key in keys
            for line in gzip.decompress(client.get_object(Bucket="models", Key=key)["Body"].read()).splitlines()]


def test_parts_go_to_s3(logs: Logs, s3_server: S3Server, s3_use_identity: Callable[..., None]) -> None:
    s3_use_identity()
    prefix = f"payload-{uuid.uuid4().hex[:8]}"
    log = logs(payload_log_uri=f"s3://models/{prefix}/")
    log.start()
    for i in range(20):
        log.offer(scope(f"r{i}"), "v1", (basket(),), (ANSWER,))
    log.stop()
    assert [r["request_id"] for r in _s3_records(s3_server, prefix + "/dt=")] == [f"r{i}" for i in range(20)]
    assert outcomes(log)["written"] == 20


def test_a_stopped_store_fails_records_not_the_caller(logs: Logs, s3_running: S3Server,
                                                      s3_use_identity: Callable[..., None]) -> None:
    s3_use_identity()
    s3_running.stop()
    log = logs(payload_log_uri="s3://models/payload-down/")
    log.start()
    for i in range(20):
        log.offer(scope(f"r{i}"), "v1", (basket(),), (ANSWER,))
    log.stop(timeout=30)
    assert outcomes(log) == {"written": 0, "dropped": 0, "failed": 20}
    assert sink_failures(log, "unreachable") >= 1


def test_a_hanging_store_holds_the_writer_not_the_caller(logs: Logs, s3_use_identity: Callable[..., None],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    s3_use_identity()
    hole = Blackhole()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", hole.endpoint)
    monkeypatch.setattr(payload_log, "S3_TIMEOUTS", {"connect_timeout": 5, "read_timeout": 60, "max_attempts": 1})
    try:
        log = logs(payload_log_uri="s3://models/payload-hang/", payload_log_part_bytes=1024,
                   payload_log_queue_records=50)
        log.start()
        i = 0
        while not hole.held:  # until the writer is inside a write that will not come back
            log.offer(scope(f"r{i}"), "v1", (basket(),), (ANSWER,))
            i += 1
            time.sleep(0.01)
        for j in range(200):  # the writer is stuck: the queue fills, then records are dropped
            log.offer(scope(f"s{j}"), "v1", (basket(),), (ANSWER,))
        assert queued(log) == 50 and outcomes(log)["dropped"] >= 150
        hole.close()  # the write in progress is reset; the last attempt at shutdown is refused
        log.stop(timeout=30)
        counted = outcomes(log)
        assert counted["written"] == 0 and sum(counted.values()) == i + 200
    finally:
        hole.close()


def test_warnings_are_rate_limited_per_reason(caplog: pytest.LogCaptureFixture) -> None:
    warn = payload_log._RateLimitedWarning()
    with caplog.at_level("WARNING", logger="retail_prediction.payload_log"):
        for _ in range(5):
            warn("cannot write", reason="unreachable")
        warn("refused", reason="access_denied")
    assert [(r.message, r.reason) for r in caplog.records] == [("cannot write", "unreachable"),
                                                              ("refused", "access_denied")]
