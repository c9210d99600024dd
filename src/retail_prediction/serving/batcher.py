"""Opportunistic micro-batching of concurrent /predict calls.

Scoring one basket is dominated by fixed per-call costs (a few NumPy calls, the compiled featurization, one
ONNX run), not by its lines, so N baskets scored together cost little more than one. Requests that reach
the scoring step within three event-loop iterations are queued and scored by one call scheduled with
`call_soon`: there is no timer and no waiting, so a busy server amortises the fixed cost over everything
that arrived together (measured in docs/benchmarks.md). When every batch holds one basket (one client at a
time), requests are scored directly instead, with a periodic probe through the queue to notice when
concurrent requests return.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from ..contract import Basket
from .model_manager import LoadedModel

ScoreFn = Callable[[LoadedModel, list[Basket]], list[dict[str, Any]]]
_Pending = tuple[LoadedModel, Basket, "asyncio.Future[dict[str, Any]]"]

log = logging.getLogger("retail_prediction.api")

# After this many flushes in a row that each found a single basket, requests come one at a time: they are
# scored directly, without the queue's loop hops and future (~10 % of a lone request's CPU), but one in
# PROBE_EVERY still goes through the queue, and the first probe that finds company restores batching.
SOLO_FLUSHES = 32
PROBE_EVERY = 16


class MicroBatcher:
    def __init__(self, score: ScoreFn, max_lines: int) -> None:
        self._score = score
        self._max_lines = max_lines
        self._pending: list[_Pending] = []
        self._scheduled = False
        self._solo_flushes = 0  # flushes in a row that found one basket: requests come alone
        self._direct = 0  # requests scored directly since

    async def predict(self, model: LoadedModel, basket: Basket) -> dict[str, Any]:
        if self._solo_flushes >= SOLO_FLUSHES and not self._pending:
            self._direct += 1
            if self._direct % PROBE_EVERY:
                return self._score_alone(model, basket)
            # A probe: queued like under load, so that a request arriving with it joins the batch and the
            # batch's size tells whether requests come alone still.
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending.append((model, basket, future))
        if not self._scheduled:
            self._scheduled = True
            # Three hops of the loop instead of one: requests whose tasks start in the next iterations join
            # too (more baskets per call, less CPU per request; a fourth hop gained nothing: docs/benchmarks.md);
            # a lone request waits three loop turns, microseconds, and a lone client is scored directly anyway.
            loop.call_soon(loop.call_soon, loop.call_soon, self._flush)
        return await future

    def _score_alone(self, model: LoadedModel, basket: Basket) -> dict[str, Any]:
        try:
            return self._score(model, [basket])[0]
        except Exception:
            log.exception("scoring failed")
            raise RuntimeError("scoring failed") from None

    def _take(self) -> list[_Pending]:
        """The next group to score: bounded in lines, so one flush never blocks the loop for long."""
        lines, taken = 0, 0
        for _, basket, _ in self._pending:
            lines += len(basket.basket_items)
            if taken and lines > self._max_lines:
                break
            taken += 1
        group, self._pending = self._pending[:taken], self._pending[taken:]
        return group

    def _flush(self) -> None:
        try:
            group = self._take()
        except Exception:  # never leave a request waiting for a flush that will not come
            log.exception("micro-batcher failed")
            group, self._pending, self._scheduled = self._pending, [], False
            for _, _, future in group:
                if not future.done():
                    future.set_exception(RuntimeError("scoring failed"))
            return
        self._solo_flushes = self._solo_flushes + 1 if len(group) == 1 and not self._pending else 0
        if self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        else:
            self._scheduled = False
        # A hot swap can leave requests of two models in one group: each is scored by its own model.
        by_model: dict[int, list[_Pending]] = {}
        for item in group:
            by_model.setdefault(id(item[0]), []).append(item)
        for items in by_model.values():
            self._score_group(items)

    def _score_group(self, items: Sequence[_Pending]) -> None:
        live = [item for item in items if not item[2].cancelled()]  # the client may have gone
        if not live:
            return
        try:
            answers = self._score(live[0][0], [basket for _, basket, _ in live])
        except Exception:
            if len(live) == 1:
                live[0][2].set_exception(RuntimeError("scoring failed"))
                log.exception("scoring failed")
                return
            # One odd basket must not fail its neighbours: score them one by one.
            for item in live:
                self._score_group([item])
            return
        for (_, _, future), answer in zip(live, answers, strict=True):
            future.set_result(answer)
