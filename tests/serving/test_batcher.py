"""The micro-batcher: batches what arrives together, scores a lone client's requests directly, and notices
when concurrent requests come back."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from retail_prediction.serving.batcher import PROBE_EVERY, SOLO_FLUSHES, MicroBatcher


class Recorder:
    """A scoring function that answers each basket with its own id and records every call's size."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[int] = []
        self.fail_on = fail_on

    def __call__(self, model: Any, baskets: list[Any]) -> list[dict[str, Any]]:
        self.calls.append(len(baskets))
        if any(b.id == self.fail_on for b in baskets):
            raise ValueError("bad basket")
        return [{"id": b.id} for b in baskets]


def _basket(i: int) -> Any:
    """A decoded request as the batcher sees it (a struct with `basket_items`), tagged with an id."""
    return SimpleNamespace(id=i, basket_items=[SimpleNamespace(product_id="P", quantity=1.0, price=1.0)])


async def _one_at_a_time(batcher: MicroBatcher, ids: range) -> None:
    for i in ids:
        assert await batcher.predict(None, _basket(i)) == {"id": i}  # type: ignore[arg-type]


async def _together(batcher: MicroBatcher, ids: range) -> None:
    answers = await asyncio.gather(*(batcher.predict(None, _basket(i)) for i in ids))  # type: ignore[arg-type]
    assert answers == [{"id": i} for i in ids]


async def _client(batcher: MicroBatcher, first: int, n: int) -> None:
    for i in range(first, first + n):
        assert await batcher.predict(None, _basket(i)) == {"id": i}  # type: ignore[arg-type]
        await asyncio.sleep(0)  # the answer goes out, the next request comes in: a loop iteration


def test_concurrent_requests_are_scored_together() -> None:
    score = Recorder()
    asyncio.run(_together(MicroBatcher(score, max_lines=2000), range(20)))
    assert score.calls == [20]


def test_a_lone_client_is_scored_directly_and_load_brings_batching_back() -> None:
    score = Recorder()
    batcher = MicroBatcher(score, max_lines=2000)

    async def scenario() -> None:
        await _one_at_a_time(batcher, range(SOLO_FLUSHES + 4 * PROBE_EVERY))
        # Every request was one call of one basket, whether queued or direct.
        assert score.calls == [1] * (SOLO_FLUSHES + 4 * PROBE_EVERY)
        assert batcher._solo_flushes >= SOLO_FLUSHES  # direct scoring, probes still alone
        score.calls.clear()
        # Load again: 8 clients, each sending its next request as soon as it has an answer. A probe meets
        # company within one probe interval and batching is back for good.
        await asyncio.gather(*(_client(batcher, 1000 * (c + 1), 4 * PROBE_EVERY) for c in range(8)))
        first_batch = next(i for i, size in enumerate(score.calls) if size > 1)
        assert first_batch <= PROBE_EVERY
        assert sum(score.calls[first_batch:]) / len(score.calls[first_batch:]) > 4  # batched while all 8 are busy

    asyncio.run(scenario())


@pytest.mark.parametrize("warm", [False, True], ids=["queued", "direct"])
def test_a_failing_basket_fails_alone(warm: bool) -> None:
    score = Recorder(fail_on=7)
    batcher = MicroBatcher(score, max_lines=2000)

    async def scenario() -> None:
        if warm:
            await _one_at_a_time(batcher, range(100, 100 + SOLO_FLUSHES))
        with pytest.raises(RuntimeError, match="scoring failed"):
            await batcher.predict(None, _basket(7))  # type: ignore[arg-type]
        # Its neighbours in a batch are still answered.
        answers = await asyncio.gather(*(batcher.predict(None, _basket(i)) for i in (5, 7, 9)),  # type: ignore[arg-type]
                                       return_exceptions=True)
        assert answers[0] == {"id": 5} and answers[2] == {"id": 9}
        assert isinstance(answers[1], RuntimeError)

    asyncio.run(scenario())
