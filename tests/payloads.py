"""Helpers of the payload log tests: baskets of a generated week as request bodies, and the parts a log wrote
(read with nothing but gzip and json, independently of the code under test)."""

from __future__ import annotations

import contextlib
import csv
import gzip
import json
import socket
import threading
from pathlib import Path
from typing import Any

_CODES = ("PROD_CODE_10", "PROD_CODE_20", "PROD_CODE_30", "PROD_CODE_40")


def week_baskets(path: Path, limit: int | None = None, price_factor: float = 1.0) -> list[dict[str, Any]]:
    """The baskets of a generated week file as /predict bodies (list form, unit price = spend / quantity,
    times `price_factor`), with the customer code, in file order."""
    baskets: dict[str, dict[str, Any]] = {}
    with gzip.open(path, "rt", newline="") as f:
        for row in csv.DictReader(f):
            basket = baskets.get(row["BASKET_ID"])
            if basket is None:
                if limit is not None and len(baskets) == limit:
                    break
                basket = baskets[row["BASKET_ID"]] = {"basket_items": [], "customer_id": row["CUST_CODE"] or None}
            quantity = float(row["QUANTITY"])
            line = {"product_id": row["PROD_CODE"], "quantity": quantity,
                    "price": float(row["SPEND"]) / quantity * price_factor}
            line.update({name.lower(): row[name] for name in _CODES if row.get(name)})
            basket["basket_items"].append(line)
    return list(baskets.values())


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
