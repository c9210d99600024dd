"""Helpers of the payload log tests: the parts a log wrote (read with nothing but gzip and json, independently
of the code under test), a log of real baskets written by the real writer, and a store that hangs."""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import threading
from pathlib import Path
from typing import Any

import msgspec


def write_log(root: Path, model: Path, bodies: list[dict[str, Any]], first_hour: float, hours: int) -> str:
    """`bodies` scored by the model and logged by the real PayloadLog into `root`, spread evenly over `hours`
    hours from `first_hour` (a Unix time): the model version."""
    from retail_prediction.contract import Basket
    from retail_prediction.serving.metrics import Metrics
    from retail_prediction.serving.payload_log import Entry, PayloadLog
    from retail_prediction.serving.service import PredictionService
    from retail_prediction.serving.settings import Settings

    service, loaded = PredictionService.for_file(model)
    baskets = [msgspec.convert(body, Basket) for body in bodies]
    answers = service.score(loaded, baskets)
    log = PayloadLog(Settings(payload_log_sample_rate=1.0, payload_log_uri=str(root),
                              payload_log_queue_records=len(bodies), payload_log_queue_lines=10**7), Metrics())
    version = loaded.predictor.version
    for i, (basket, answer) in enumerate(zip(baskets, answers, strict=True)):
        at = first_hour + 3600 * (i * hours // len(bodies)) + i % 3000
        log.enqueue(Entry(at, f"r{i}", "/predict", version, [basket], [answer], 0.002))
    log.start()
    log.stop()
    return version


def part_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.jsonl.gz"))


def read_records(root: Path) -> list[dict[str, Any]]:
    """Every record of every part under `root`, parts in name order."""
    return [json.loads(line) for path in part_files(root) for line in gzip.open(path).read().splitlines()]


class Blackhole:
    """A TCP server that accepts connections and never answers: a store that hangs. `release()` closes what
    it holds (the client then sees a reset), `close()` stops it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def release(self) -> None:
        for conn in self.held:
            conn.close()

    def close(self) -> None:
        self.release()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self.sock.close()
