"""gateway.batches.slots: batch lines in flight, fewer while interactive requests hold an engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from adapters.engine_checks import EngineExpectation
from adapters.engines import Engine, EnginePool
from gateway.batches.slots import BatchSlots


@pytest.fixture
async def pool() -> AsyncIterator[EnginePool]:
    async with httpx.AsyncClient() as client:  # never called: base-model leases load nothing
        engines = [Engine(url="http://e0", healthy=True), Engine(url="http://e1", healthy=True)]
        yield EnginePool(engines, client, expect=EngineExpectation(served_name="m", max_lora_rank=8), max_resident=4)


async def started(slots: BatchSlots, n: int) -> list[asyncio.Task[None]]:
    tasks = [asyncio.create_task(slots.acquire()) for _ in range(n)]
    await asyncio.sleep(0.01)
    return tasks


def done(tasks: list[asyncio.Task[None]]) -> int:
    return sum(t.done() for t in tasks)


async def test_full_concurrency_while_no_interactive_request_runs(pool: EnginePool) -> None:
    slots = BatchSlots(pool, idle=4, busy=1)
    tasks = await started(slots, 5)
    assert done(tasks) == 4 and slots.inflight == 4
    slots.release()
    await asyncio.sleep(0.01)
    assert done(tasks) == 5


async def test_one_line_beside_interactive_requests_and_more_once_they_end(pool: EnginePool) -> None:
    slots = BatchSlots(pool, idle=4, busy=1)
    live = [await pool.acquire(None), await pool.acquire(None)]  # on both engines
    tasks = await started(slots, 4)
    assert done(tasks) == 1 and slots.limit() == 1
    pool.release(live[0])
    await asyncio.sleep(0.01)
    assert done(tasks) == 1  # one interactive request still runs
    pool.release(live[1])  # the pool says so: the waiting lines go on at once
    await asyncio.sleep(0.01)
    assert done(tasks) == 4 and slots.limit() == 4

    # Lines in flight are not interrupted when interactive load comes back; new ones wait.
    again = await pool.acquire(None)
    more = await started(slots, 1)
    assert done(more) == 0 and slots.inflight == 4
    for _ in range(3):
        slots.release()
    await asyncio.sleep(0.01)
    assert done(more) == 0 and slots.inflight == 1  # still at the busy limit
    slots.release()
    await asyncio.sleep(0.01)
    assert done(more) == 1
    pool.release(again)


async def test_batch_leases_do_not_count_as_interactive(pool: EnginePool) -> None:
    slots = BatchSlots(pool, idle=3, busy=1)
    held = [await pool.acquire(None, background=True) for _ in range(3)]
    assert slots.limit() == 3
    for lease in held:
        pool.release(lease)


@pytest.mark.parametrize(("idle", "busy", "expected"), [(4, 8, 4), (4, 0, 1), (2, 1, 1)])
def test_busy_limit_is_between_one_and_the_full_concurrency(
    pool: EnginePool, idle: int, busy: int, expected: int
) -> None:
    assert BatchSlots(pool, idle=idle, busy=busy).busy == expected
