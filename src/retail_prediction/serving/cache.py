"""An in-memory LRU of recent predictions, keyed by the model and the normalised basket.

The key holds the model's archive SHA-256, so a hot reload can never serve an answer of the old model;
entries of the old model simply age out. Line order does not change the features (they are sums,
means and maxima over lines), so lines are sorted to make reordered baskets share an entry.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from operator import attrgetter
from typing import Any

from ..contract import HIERARCHY_FIELDS

BasketKey = tuple[Hashable, ...]
_CODES = attrgetter("category", *HIERARCHY_FIELDS)


def basket_key(model_sha256: str, items: Mapping[str, Any] | Sequence[Any]) -> BasketKey:
    """The key of a basket's lines (a dict product code -> line, or a list of lines with a product_id)."""
    pairs = items.items() if isinstance(items, Mapping) else ((line.product_id, line) for line in items)
    rows = sorted((product, line.quantity, line.price, *(code or "" for code in _CODES(line)))
                  for product, line in pairs)
    return (model_sha256, *rows)


class PredictionCache:
    """Thread-safe LRU (batch requests run in worker threads). size 0 = disabled, every call a no-op."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[BasketKey, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.size > 0

    def get(self, key: BasketKey) -> dict[str, Any] | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: BasketKey, value: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
