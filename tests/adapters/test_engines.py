"""Tests for adapters.engines.EnginePool against fake vLLM servers.

`FakeVLLM` is an httpx.MockTransport handler standing in for several engines (told apart
by host). It keeps what each engine really has loaded, records every call, and can be
told to refuse connections, to report unhealthy, to "restart" (forget its adapters), or
to hold loads until a test lets them finish. Like vLLM, it answers /v1 routes only with
the engine's key when it has one, and lists the model it serves on /v1/models.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from pydantic import SecretStr

from adapters.engine_checks import PROBE_NAME, EngineExpectation, Problem
from adapters.engines import Engine, EnginePool, LoraRef, bearer, run_with_lease
from core.errors import TailorError

URLS = ["http://e0:8000", "http://e1:8000", "http://e2:8000"]
LOAD = "/v1/load_lora_adapter"
UNLOAD = "/v1/unload_lora_adapter"
MODELS = "/v1/models"
BASE = "SmolLM2-135M-Instruct"
EXPECT = EngineExpectation(served_name=BASE, max_lora_rank=16)


@dataclass
class Call:
    engine: str
    path: str
    name: str | None = None
    authorization: str | None = None


@dataclass
class FakeVLLM:
    calls: list[Call] = field(default_factory=list)
    loaded: dict[str, set[str]] = field(default_factory=dict)  # engine -> adapters it really has
    refuse: set[str] = field(default_factory=set)  # engines refusing connections
    unhealthy: set[str] = field(default_factory=set)  # engines whose /health says 503
    refuse_load_of: set[str] = field(default_factory=set)  # loads of these adapters: connection drops
    load_gate: asyncio.Event | None = None  # when set: loads wait for it
    load_seen: asyncio.Event = field(default_factory=asyncio.Event)
    unload_gate: asyncio.Event | None = None
    unload_seen: asyncio.Event = field(default_factory=asyncio.Event)
    on_load_done: list[object] = field(default_factory=list)  # callables run as a load returns
    keys: dict[str, str] = field(default_factory=dict)  # engine -> its --api-key
    served: dict[str, str] = field(default_factory=dict)  # engine -> its --served-model-name (default BASE)
    max_rank: dict[str, int] = field(default_factory=dict)  # engine -> its --max-lora-rank (default 64)
    no_runtime_lora: set[str] = field(default_factory=set)  # engines without /v1/load_lora_adapter

    def engine_of(self, request: httpx.Request) -> str:
        return f"http://{request.url.host}:{request.url.port}"

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        engine = self.engine_of(request)
        path = request.url.path
        body = json.loads(request.content) if request.content else {}
        name = body.get("lora_name")
        self.calls.append(Call(engine, path, name, request.headers.get("authorization")))
        if engine in self.refuse or (path == LOAD and name in self.refuse_load_of):
            raise httpx.ConnectError("connection refused", request=request)
        have = self.loaded.setdefault(engine, set())
        if path == "/health":  # unauthenticated in vLLM
            return httpx.Response(503 if engine in self.unhealthy else 200)
        key = self.keys.get(engine)
        if key and request.headers.get("authorization") != f"Bearer {key}":
            return httpx.Response(401, json={"error": "Unauthorized"})
        if path == MODELS:
            served = self.served.get(engine, BASE)
            cards = [{"id": served, "object": "model", "root": f"/models/{served}", "parent": None}]
            cards += [{"id": n, "object": "model", "root": f"/store/{n}", "parent": served} for n in sorted(have)]
            return httpx.Response(200, json={"object": "list", "data": cards})
        if path in (LOAD, UNLOAD) and engine in self.no_runtime_lora:
            return httpx.Response(404, json={"detail": "Not Found"})
        if path == LOAD and name == PROBE_NAME:
            rank = int(body["lora_path"].rsplit("-", 1)[1])
            if rank > self.max_rank.get(engine, 64):
                return httpx.Response(
                    400, json={"message": f"LoRA rank {rank} is greater than max_lora_rank {self.max_rank[engine]}."}
                )
            have.add(name)
            return httpx.Response(200, text="Success")
        if path == LOAD:
            self.load_seen.set()
            if self.load_gate is not None:
                await self.load_gate.wait()
            if name in have:
                return httpx.Response(
                    400,
                    json={
                        "object": "error",
                        "type": "BadRequestError",
                        "code": 400,
                        "message": f"The lora adapter '{name}' has already been loaded.",
                    },
                )
            if name.startswith("bad"):
                return httpx.Response(400, json={"message": f"Invalid LoRA adapter {name}: no adapter_config.json"})
            if name.startswith("boom"):
                return httpx.Response(500, text="Internal Server Error")
            assert body["lora_path"] == f"/store/{name}"
            have.add(name)
            for hook in self.on_load_done:
                hook(engine, name)  # type: ignore[operator]
            return httpx.Response(200, text=f"Success: LoRA adapter '{name}' added successfully.")
        if path == UNLOAD:
            self.unload_seen.set()
            if self.unload_gate is not None:
                await self.unload_gate.wait()
            if name not in have:
                return httpx.Response(404, json={"message": f"The lora adapter '{name}' cannot be found."})
            have.discard(name)
            return httpx.Response(200, text="ok")
        return httpx.Response(404)

    def restart(self, engine: str) -> None:
        self.loaded[engine] = set()

    def count(self, path: str, name: str | None = None, engine: str | None = None) -> int:
        return sum(
            1
            for c in self.calls
            if c.path == path and (name is None or c.name == name) and (engine is None or c.engine == engine)
        )


def lora(name: str) -> LoraRef:
    return LoraRef(name=name, local_path=lambda: f"/store/{name}")


@pytest.fixture
def fake() -> FakeVLLM:
    return FakeVLLM()


@pytest.fixture
async def client(fake: FakeVLLM) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake)) as c:
        yield c


async def make_pool(client: httpx.AsyncClient, urls: list[str] = URLS, max_resident: int = 8) -> EnginePool:
    pool = EnginePool(urls, client, expect=EXPECT, max_resident=max_resident)
    await pool.wait_healthy(5)
    return pool


async def use(pool: EnginePool, name: str | None) -> str:
    """One whole request: acquire, release; returns the engine it ran on."""
    lease = await pool.acquire(lora(name) if name else None)
    pool.release(lease)
    return lease.url


def home_of(pool: EnginePool, name: str) -> str:
    return max(pool.engines, key=lambda e: e.score(name)).url


def engine(pool: EnginePool, url: str):  # type: ignore[no-untyped-def]
    return next(e for e in pool.engines if e.url == url)


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


# --- engine answers ----------------------------------------------------------------


async def test_already_loaded_counts_as_success(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    pool = await make_pool(client, URLS[:1])
    fake.loaded[URLS[0]] = {"x"}  # the engine has it, the pool does not know (e.g. our restart)
    lease = await pool.acquire(lora("x"))
    assert lease.lora == "x" and "x" in pool.engines[0].resident
    assert fake.count(LOAD, "x") == 1
    pool.release(lease)
    await use(pool, "x")
    assert fake.count(LOAD, "x") == 1


@pytest.mark.parametrize(("name", "status"), [("bad-adapter", 400), ("boom-adapter", 502)])
async def test_other_load_errors_propagate(client: httpx.AsyncClient, fake: FakeVLLM, name: str, status: int) -> None:
    pool = await make_pool(client, URLS[:1])
    with pytest.raises(TailorError) as err:
        await pool.acquire(lora(name))
    assert err.value.status == status and err.value.code == "engine_error"
    e = pool.engines[0]
    assert name not in e.resident and e.loading == {} and e.users == {} and e.inflight == 0
    assert e.healthy  # an engine that answers is not down
    # Not cached as failed: the next request tries again.
    with pytest.raises(TailorError):
        await pool.acquire(lora(name))
    assert fake.count(LOAD, name) == 2


async def test_transport_error_during_load_marks_engine_down(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    pool = await make_pool(client, URLS[:2])
    name = "x"
    home = home_of(pool, name)
    other = next(u for u in URLS[:2] if u != home)
    fake.refuse.add(home)
    with pytest.raises(TailorError) as err:
        await pool.acquire(lora(name))
    assert err.value.status == 503
    e = engine(pool, home)
    assert not e.healthy and name not in e.resident and e.loading == {} and e.users == {}
    assert e.inflight == 0
    # The next request goes to the engine still up.
    assert await use(pool, name) == other


async def test_engine_lost_mid_load_fails_other_waiting_loads_with_503(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    """Loads cancelled because their engine was marked down end as 503, not as a stray
    CancelledError in a request that was never cancelled."""
    pool = await make_pool(client, URLS[:1])
    fake.load_gate = asyncio.Event()
    slow = asyncio.create_task(pool.acquire(lora("slow")))
    await asyncio.wait_for(fake.load_seen.wait(), 10)
    fake.refuse_load_of.add("broken")
    with pytest.raises(TailorError) as err:
        await pool.acquire(lora("broken"))
    assert err.value.status == 503
    assert not pool.engines[0].healthy
    with pytest.raises(TailorError) as err:
        await asyncio.wait_for(slow, 10)
    assert err.value.status == 503
    e = pool.engines[0]
    assert e.users == {} and e.inflight == 0 and e.loading == {}
    fake.load_gate.set()


# --- restarts ----------------------------------------------------------------------


async def test_recovered_engine_gets_its_adapters_back(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    pool = await make_pool(client, URLS[:1], max_resident=4)
    e = pool.engines[0]
    for name in ["a", "b", "c"]:
        await use(pool, name)
    fake.restart(URLS[0])
    fake.unhealthy.add(URLS[0])
    assert await pool.check(e) is False and not e.healthy
    assert await pool.check(e) is False  # still down: nothing happens
    assert fake.count(LOAD) == 3

    fake.unhealthy.discard(URLS[0])
    assert await pool.check(e) is True and e.healthy
    assert fake.loaded[URLS[0]] == {"a", "b", "c"}
    assert list(e.resident) == ["a", "b", "c"]  # recency kept
    assert fake.count(LOAD) == 6
    assert await pool.check(e) is True
    assert fake.count(LOAD) == 6  # healthy and staying healthy: no reload
    await use(pool, "a")
    assert fake.count(LOAD) == 6


async def test_recovery_drops_adapters_that_fail_to_reload(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    pool = await make_pool(client, URLS[:1], max_resident=4)
    e = pool.engines[0]
    for name in ["a", "b"]:
        await use(pool, name)
    fake.unhealthy.add(URLS[0])
    await pool.check(e)
    fake.restart(URLS[0])
    fake.unhealthy.discard(URLS[0])
    fake.refuse_load_of.add("a")
    await pool.check(e)
    assert list(e.resident) == ["b"]  # "a" could not be reloaded: not claimed as resident
    assert fake.loaded[URLS[0]] == {"b"}
    fake.refuse_load_of.clear()
    await pool.check(e)  # the refused connection marked it down; the next check brings it back
    assert e.healthy
    assert await use(pool, "a") == URLS[0]
    assert fake.loaded[URLS[0]] == {"a", "b"}


async def test_forget_then_ensure_loaded_reloads(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    pool = await make_pool(client, URLS[:1])
    e = pool.engines[0]
    await use(pool, "a")
    fake.restart(URLS[0])  # restarted behind our back: the proxy sees a 404 and forgets
    pool.forget(e, "a")
    assert "a" not in e.resident
    await pool.ensure_loaded(e, lora("a"))
    assert "a" in e.resident and fake.loaded[URLS[0]] == {"a"} and fake.count(LOAD, "a") == 2


async def test_monitor_marks_engines_up_and_down(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    pool = EnginePool(URLS[:2], client, expect=EXPECT, max_resident=4, health_interval_s=0.01)
    pool.start_monitor()
    try:
        for _ in range(1000):
            if all(e.healthy for e in pool.engines):
                break
            await asyncio.sleep(0.01)
        assert all(e.healthy for e in pool.engines)
        fake.refuse.add(URLS[1])
        for _ in range(1000):
            if not pool.engines[1].healthy:
                break
            await asyncio.sleep(0.01)
        assert [e.healthy for e in pool.engines] == [True, False]
    finally:
        await pool.stop_monitor()
    assert pool._monitor is not None and pool._monitor.done()


def test_stats(client: httpx.AsyncClient) -> None:
    pool = EnginePool([URLS[0] + "/"], client, expect=EXPECT, max_resident=0)
    assert pool.max_resident == 1
    assert pool.stats() == [
        {
            "url": URLS[0],
            "healthy": False,
            "inflight": 0,
            "batch_inflight": 0,
            "resident_adapters": 0,
            "loads": 0,
            "evictions": 0,
        }
    ]


# --- whose engine it is, and how it is set up -----------------------------------------

PROBING = EngineExpectation(served_name=BASE, max_lora_rank=16, probe_adapter=lambda: "/probe/rank-16")


def keyed(url: str, key: str) -> Engine:
    return Engine(url=url, headers=bearer(key))


def test_bearer() -> None:
    assert bearer("k") == {"Authorization": "Bearer k"}
    assert bearer(SecretStr("s")) == {"Authorization": "Bearer s"}
    assert bearer(None) == {} and bearer(SecretStr("")) == {}
    assert "k0" not in repr(keyed(URLS[0], "k0"))  # a logged Engine shows no key


async def test_every_call_carries_the_engines_key(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    keys = {URLS[0]: "key-zero", URLS[1]: "key-one"}
    fake.keys = dict(keys)
    pool = EnginePool([keyed(u, k) for u, k in keys.items()], client, expect=PROBING, max_resident=1)
    await pool.wait_healthy(5)
    for name in [f"adapter-{i}" for i in range(12)]:
        await use(pool, name)
    for url, key in keys.items():
        mine = [c for c in fake.calls if c.engine == url and c.path != "/health"]
        assert {c.path for c in mine} == {MODELS, LOAD, UNLOAD}
        assert fake.count(LOAD, engine=url) > 2  # the probe and real adapters
        assert all(c.authorization == f"Bearer {key}" for c in mine), mine


async def test_engine_with_another_key_is_never_used(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    fake.keys[URLS[0]] = "a stranger's key"
    pool = EnginePool([keyed(URLS[0], "ours"), keyed(URLS[1], "ours")], client, expect=PROBING, max_resident=4)
    await pool.wait_healthy(5, all_engines=False)
    stranger = pool.engines[0]
    assert [e.healthy for e in pool.engines] == [False, True]
    assert stranger.problem is not None and stranger.problem.startswith(f"engine {URLS[0]} refused Tailor's key")
    assert {await use(pool, name) for name in [None, "a", "b", "c", None]} == {URLS[1]}
    assert fake.count(LOAD, engine=URLS[0]) == 0  # not even the probe
    with pytest.raises(TimeoutError, match="refused Tailor's key"):
        await pool.wait_healthy(0)


async def test_engine_serving_another_model_is_never_used(
    client: httpx.AsyncClient, fake: FakeVLLM, caplog: pytest.LogCaptureFixture
) -> None:
    fake.served[URLS[0]] = "llama-3"
    pool = EnginePool(URLS[:2], client, expect=PROBING, max_resident=4)
    with caplog.at_level(logging.INFO, logger="tailor.engines"):
        await pool.wait_healthy(5, all_engines=False)
        await pool.wait_healthy(5, all_engines=False)
    message = f"engine {URLS[0]} serves 'llama-3' but TAILOR_BASE_MODEL_NAME is '{BASE}'"
    assert pool.engines[0].problem == message and not pool.engines[0].healthy
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [message]  # once, not on every check
    assert {await use(pool, name) for name in [None, "a", "b"]} == {URLS[1]}
    # Checked on every health check, not only at start: a swapped engine is dropped at once.
    fake.served[URLS[1]] = "llama-3"
    assert await pool.check(pool.engines[1]) is False
    with pytest.raises(TailorError) as err:
        await pool.acquire(None)
    assert err.value.status == 503


async def test_operator_engine_max_rank_checked_at_start_and_on_reconnect(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    fake.max_rank[URLS[0]] = 8
    pool = EnginePool(URLS[:2], client, expect=PROBING, max_resident=4)
    await pool.wait_healthy(5, all_engines=False)
    small, good = pool.engines
    assert not small.healthy and good.healthy
    assert small.problem == (
        f"engine {URLS[0]} takes LoRA ranks below 16: start it with --max-lora-rank 16 or lower "
        "TAILOR_ENGINE_MAX_LORA_RANK"
    )
    assert fake.loaded[URLS[1]] == set()  # the probe was unloaded again
    assert fake.count(LOAD, PROBE_NAME, URLS[1]) == 1
    await pool.check(good)
    await pool.check(good)
    assert fake.count(LOAD, PROBE_NAME, URLS[1]) == 1  # while it stays up: no more probes

    # It restarts with a smaller --max-lora-rank: caught when it comes back, before any traffic.
    fake.unhealthy.add(URLS[1])
    assert await pool.check(good) is False
    fake.unhealthy.discard(URLS[1])
    fake.max_rank[URLS[1]] = 4
    assert await pool.check(good) is False and "--max-lora-rank 16" in (good.problem or "")
    fake.max_rank[URLS[1]] = 16
    assert await pool.check(good) is True and good.problem is None


async def test_operator_engine_without_runtime_lora_loading(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    fake.no_runtime_lora.add(URLS[0])
    pool = EnginePool(URLS[:1], client, expect=PROBING, max_resident=4)
    assert await pool.check(pool.engines[0]) is False
    assert "does not load adapters at run time" in (pool.engines[0].problem or "")


async def test_child_engine_is_checked_by_its_owner_first(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    owner: list[Problem | None] = [Problem("child engine is starting")]
    child = Engine(url=URLS[0], owner_check=lambda: owner[0])
    pool = EnginePool([child], client, expect=PROBING, max_resident=4)
    # Whatever answers on its port, it is not used while the owner says it is not ours.
    assert await pool.check(child) is False and child.problem == "child engine is starting"
    assert fake.calls == []
    owner[0] = None
    assert await pool.check(child) is True
    assert fake.count(LOAD) == 0  # launched with Tailor's own flags: no probe
    owner[0] = Problem("child engine exited with code 1")
    assert await pool.check(child) is False and not child.healthy


async def test_load_refusal_keeps_the_engines_words_in_the_log(
    client: httpx.AsyncClient, fake: FakeVLLM, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await make_pool(client, URLS[:1])
    with caplog.at_level(logging.WARNING, logger="tailor.engines"), pytest.raises(TailorError) as err:
        await pool.acquire(lora("bad-adapter"))
    assert err.value.message == "The inference engine could not load this model's adapter."
    assert "no adapter_config.json" in caplog.text and "bad-adapter" in caplog.text
