"""adapters.engines.EnginePool against fake vLLM servers (tests.adapters.engine_world):
what engines answer to loads, engines restarting, and whose engine it is and how it is set up."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from pydantic import SecretStr

from adapters.engine_checks import PROBE_NAME, EngineExpectation, Problem
from adapters.engines import Engine, EnginePool, bearer
from core.errors import TailorError
from tests.adapters.engine_world import (
    BASE,
    EXPECT,
    LOAD,
    MODELS,
    UNLOAD,
    URLS,
    FakeVLLM,
    engine,
    home_of,
    lora,
    make_pool,
    use,
)

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


async def test_transport_error_during_load_marks_engine_down_and_loads_elsewhere(
    client: httpx.AsyncClient, fake: FakeVLLM
) -> None:
    pool = await make_pool(client, URLS[:2])
    name = "x"
    home = home_of(pool, name)
    other = next(u for u in URLS[:2] if u != home)
    fake.refuse.add(home)
    # The request itself goes to the engine still up (its adapter loaded there).
    lease = await pool.acquire(lora(name))
    assert lease.engine.url == other and name in lease.engine.resident
    pool.release(lease)
    e = engine(pool, home)
    assert not e.healthy and name not in e.resident and e.loading == {} and e.users == {}
    assert e.inflight == 0
    assert await use(pool, name) == other
    # With no engine left up, the request gets the 503.
    fake.refuse.add(other)
    engine(pool, other).resident.clear()
    with pytest.raises(TailorError) as err:
        await pool.acquire(lora(name))
    assert err.value.status == 503 and err.value.code == "engine_unavailable"


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
