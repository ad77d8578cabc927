"""adapters.engines.EnginePool against fake vLLM servers (tests.adapters.engine_world):
picking engines, adapter affinity, LRU residency and single-flight loads. How engines
answer loads, restart, and are checked: test_engine_lifecycle.py."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from adapters.engines import EnginePool, run_with_lease
from core.errors import TailorError
from tests.adapters.engine_world import (
    EXPECT,
    LOAD,
    UNLOAD,
    URLS,
    FakeVLLM,
    engine,
    home_of,
    lora,
    make_pool,
    use,
)

# --- health and picking --------------------------------------------------------------


async def test_no_healthy_engine_is_503(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    pool = EnginePool(URLS, client, expect=EXPECT, max_resident=4)  # never checked: nothing healthy yet
    for name in (None, "a"):
        with pytest.raises(TailorError) as err:
            pool.pick(name)
        assert err.value.status == 503
        with pytest.raises(TailorError) as err:
            await pool.acquire(lora(name) if name else None)
        assert err.value.status == 503 and err.value.code == "engine_unavailable"
    assert fake.calls == []

    fake.unhealthy.update(URLS[:2])
    fake.refuse.add(URLS[2])
    assert [await pool.check(e) for e in pool.engines] == [False, False, False]
    with pytest.raises(TailorError) as err:
        pool.pick(None)
    assert err.value.status == 503


async def test_restarting_engine_is_skipped(client: httpx.AsyncClient) -> None:
    pool = await make_pool(client, URLS[:2])
    pool.engines[0].restarting = True
    assert {await use(pool, None) for _ in range(4)} == {URLS[1]}
    pool.engines[1].restarting = True
    with pytest.raises(TailorError) as err:
        await pool.acquire(None)
    assert err.value.status == 503


async def test_wait_healthy(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    fake.refuse.add(URLS[2])
    pool = EnginePool(URLS, client, expect=EXPECT, max_resident=4)
    await pool.wait_healthy(5, all_engines=False)
    assert [e.healthy for e in pool.engines] == [True, True, False]
    with pytest.raises(TimeoutError, match="e2"):
        await pool.wait_healthy(0)


async def test_base_requests_go_to_least_inflight(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    pool = await make_pool(client)
    leases = [await pool.acquire(None) for _ in range(3)]
    assert sorted(lease.url for lease in leases) == sorted(URLS)  # one each
    assert [e.inflight for e in pool.engines] == [1, 1, 1]
    more = await pool.acquire(None)
    assert [e.inflight for e in pool.engines].count(2) == 1

    busy = more.engine
    freed = next(lease for lease in leases if lease.engine is not busy)
    pool.release(freed)
    nxt = await pool.acquire(None)
    assert nxt.engine is freed.engine  # the one with fewest requests running
    for lease in [*leases, more, nxt]:
        if lease is not freed:
            pool.release(lease)
    assert [e.inflight for e in pool.engines] == [0, 0, 0]
    assert fake.count(LOAD) == 0  # base requests load nothing


async def test_background_requests_are_counted_apart(client: httpx.AsyncClient) -> None:
    pool = await make_pool(client, URLS[:2])
    released: list[int] = []
    pool.on_release(lambda: released.append(pool.foreground_inflight()))
    batch = [await pool.acquire(None, background=True) for _ in range(2)]
    assert pool.foreground_inflight() == 0 and [e.background_inflight for e in pool.engines] == [1, 1]
    live = await pool.acquire(lora("a"))
    assert pool.foreground_inflight() == 1 and not live.background
    pool.release(batch[0])
    pool.release(live)
    pool.release(batch[1])
    assert released == [1, 0, 0]  # told after each lease went back, with the count by then
    assert [(e.inflight, e.background_inflight) for e in pool.engines] == [(0, 0), (0, 0)]
    assert pool.stats()[0]["batch_inflight"] == 0


async def test_unhealthy_engine_gets_no_base_requests(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    pool = await make_pool(client)
    fake.unhealthy.add(URLS[0])
    assert await pool.check(pool.engines[0]) is False
    leases = [await pool.acquire(None) for _ in range(6)]
    assert {lease.url for lease in leases} == set(URLS[1:])


async def test_run_with_lease_releases_on_error(client: httpx.AsyncClient) -> None:
    pool = await make_pool(client, URLS[:1])

    async def fails(lease):  # type: ignore[no-untyped-def]
        assert lease.engine.inflight == 1 and lease.engine.users == {"a": 1}
        raise RuntimeError("upstream broke")

    with pytest.raises(RuntimeError):
        await run_with_lease(pool, lora("a"), fails)
    assert pool.engines[0].inflight == 0 and pool.engines[0].users == {}

    async def ok(lease):  # type: ignore[no-untyped-def]
        return lease.url

    assert await run_with_lease(pool, None, ok) == URLS[0]


# --- adapter affinity --------------------------------------------------------------


async def test_same_adapter_same_engine_loaded_once(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    pool = await make_pool(client)
    urls = {await use(pool, "acme-support") for _ in range(10)}
    assert urls == {home_of(pool, "acme-support")}
    assert fake.count(LOAD) == 1 and fake.count(LOAD, "acme-support", home_of(pool, "acme-support")) == 1
    assert fake.loaded[home_of(pool, "acme-support")] == {"acme-support"}


async def test_different_adapters_spread_over_engines(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    pool = await make_pool(client, max_resident=100)
    names = [f"tenant{i}-adapter" for i in range(30)]
    placed = {n: await use(pool, n) for n in names}
    per_engine = {u: sum(1 for p in placed.values() if p == u) for u in URLS}
    assert all(count >= 3 for count in per_engine.values()), per_engine
    assert placed == {n: home_of(pool, n) for n in names}
    # The placement is a property of (adapter, engine URL), not of load order or process.
    other = EnginePool(list(reversed(URLS)), client, expect=EXPECT, max_resident=100)
    assert {n: home_of(other, n) for n in names} == placed
    # Again, in another order: every adapter stays where it is, nothing loads twice.
    assert {n: await use(pool, n) for n in reversed(names)} == placed
    assert fake.count(LOAD) == 30


def _name_with_fallback_before_home(pool: EnginePool) -> tuple[str, str, str]:
    """An adapter whose second-choice engine comes before its home in the engine list."""
    for i in range(1000):
        name = f"adapter-{i}"
        ranked = sorted(pool.engines, key=lambda e: e.score(name), reverse=True)
        if pool.engines.index(ranked[1]) < pool.engines.index(ranked[0]):
            return name, ranked[0].url, ranked[1].url
    raise AssertionError("no such name")


async def test_adapter_moves_when_its_engine_is_down_and_returns(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    pool = await make_pool(client)
    name, home, fallback = _name_with_fallback_before_home(pool)
    assert await use(pool, name) == home

    fake.unhealthy.add(home)
    fake.restart(home)
    assert await pool.check(engine(pool, home)) is False
    calls_before = len(fake.calls)
    assert {await use(pool, name) for _ in range(3)} == {fallback}  # the next choice, stable
    assert fake.count(LOAD, name, fallback) == 1
    assert all(c.engine != home for c in fake.calls[calls_before:])  # the down engine is left alone

    fake.unhealthy.discard(home)
    assert await pool.check(engine(pool, home)) is True
    assert name in fake.loaded[home]  # reloaded on recovery
    # Back to its home engine, so one engine keeps serving it; the spare copy ages out.
    assert {await use(pool, name) for _ in range(3)} == {home}


# --- residency: LRU ----------------------------------------------------------------


async def test_lru_eviction_keeps_at_most_max_resident(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    pool = await make_pool(client, URLS[:1], max_resident=2)
    e = pool.engines[0]
    await use(pool, "a")
    await use(pool, "b")
    await use(pool, "a")  # a is now the most recently used
    await use(pool, "c")
    assert list(e.resident) == ["a", "c"]
    assert [c.name for c in fake.calls if c.path == UNLOAD] == ["b"]
    assert fake.loaded[URLS[0]] == {"a", "c"}
    assert e.evictions == 1 and e.loads == 3

    for name in ["d", "e", "a", "f", "g"]:
        await use(pool, name)
        assert len(e.resident) <= 2
        assert fake.loaded[URLS[0]] == set(e.resident)
    assert list(e.resident) == ["f", "g"]


async def test_eviction_skips_adapters_with_running_requests(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    pool = await make_pool(client, URLS[:1], max_resident=2)
    e = pool.engines[0]
    held = await pool.acquire(lora("a"))  # a request on "a" keeps running
    await use(pool, "b")
    assert list(e.resident) == ["a", "b"]  # "a" is the least recently used...
    await use(pool, "c")
    assert list(e.resident) == ["a", "c"]  # ...but busy, so "b" went
    assert [c.name for c in fake.calls if c.path == UNLOAD] == ["b"]
    pool.release(held)
    await use(pool, "d")
    assert list(e.resident) == ["c", "d"]  # idle again: "a" is evicted like any other
    assert fake.loaded[URLS[0]] == {"c", "d"}


async def test_all_resident_busy_goes_over_limit_then_shrinks(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    pool = await make_pool(client, URLS[:1], max_resident=1)
    e = pool.engines[0]
    a = await pool.acquire(lora("a"))
    b = await pool.acquire(lora("b"))  # "a" is busy: no eviction, over the limit for now
    assert set(e.resident) == {"a", "b"} and fake.count(UNLOAD) == 0
    assert e.users == {"a": 1, "b": 1}
    pool.release(a)
    pool.release(b)
    assert e.users == {}
    await use(pool, "c")
    assert list(e.resident) == ["c"]
    assert sorted(c.name for c in fake.calls if c.path == UNLOAD) == ["a", "b"]


async def test_acquire_refreshes_recency(client: httpx.AsyncClient) -> None:
    pool = await make_pool(client, URLS[:1], max_resident=3)
    for name in ["a", "b", "c", "a"]:
        await use(pool, name)
    assert list(pool.engines[0].resident) == ["b", "c", "a"]


# --- single flight -----------------------------------------------------------------


async def test_concurrent_first_requests_share_one_load(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    pool = await make_pool(client)
    fake.load_gate = asyncio.Event()
    tasks = [asyncio.create_task(pool.acquire(lora("hot"))) for _ in range(10)]
    await asyncio.wait_for(fake.load_seen.wait(), 10)
    for _ in range(5):
        await asyncio.sleep(0)  # let every waiter reach the load
    assert not any(t.done() for t in tasks)
    fake.load_gate.set()
    leases = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert fake.count(LOAD) == 1
    assert {lease.url for lease in leases} == {home_of(pool, "hot")}
    e = engine(pool, home_of(pool, "hot"))
    assert e.users == {"hot": 10} and e.inflight == 10 and e.loads == 1
    for lease in leases:
        pool.release(lease)
    assert e.users == {} and e.inflight == 0 and e.loading == {}


async def test_cancelled_waiter_does_not_cancel_the_shared_load(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    pool = await make_pool(client, URLS[:1])
    fake.load_gate = asyncio.Event()
    first = asyncio.create_task(pool.acquire(lora("x")))
    second = asyncio.create_task(pool.acquire(lora("x")))
    await asyncio.wait_for(fake.load_seen.wait(), 10)
    first.cancel()  # that client went away
    with pytest.raises(asyncio.CancelledError):
        await first
    fake.load_gate.set()
    lease = await asyncio.wait_for(second, 10)
    e = pool.engines[0]
    assert "x" in e.resident and fake.count(LOAD) == 1
    assert e.users == {"x": 1} and e.inflight == 1  # the cancelled one holds nothing
    pool.release(lease)
    assert e.users == {} and e.inflight == 0


async def test_load_finishing_for_one_request_is_not_evicted_under_it(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    """An adapter whose load just finished must not be evicted by a concurrent
    eviction before the requests that waited for it start using it."""
    pool = await make_pool(client, URLS[:1], max_resident=1)
    e = pool.engines[0]
    await use(pool, "z")  # resident, idle
    fake.unload_gate = asyncio.Event()
    b = asyncio.create_task(pool.acquire(lora("b")))  # evicts "z"; the unload hangs
    await asyncio.wait_for(fake.unload_seen.wait(), 10)
    # "a" loads meanwhile; its load answering is what lets the unload answer too.
    fake.on_load_done.append(lambda _eng, name: name == "a" and fake.unload_gate.set())
    a = asyncio.create_task(pool.acquire(lora("a")))
    lease_a, lease_b = await asyncio.wait_for(asyncio.gather(a, b), 10)
    assert lease_a.lora == "a" and "a" in e.resident and "a" in fake.loaded[URLS[0]]
    assert e.users == {"a": 1, "b": 1}
    pool.release(lease_a)
    pool.release(lease_b)
