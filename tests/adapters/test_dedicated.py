"""The engines of full-model versions (adapters.dedicated) with a fake launcher: one start for
many first requests, 503 with Retry-After while starting, scale to zero, the LRU bound."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from adapters.dedicated import DedicatedEngines, Running
from adapters.engine_checks import EngineExpectation
from adapters.engines import Engine, EnginePool
from adapters.supervisor import EngineLaunch
from core.config import Settings
from core.errors import TailorError
from tests.openai_schema import validate

A, B, C = ("a" * 64, "b" * 64, "c" * 64)


class FakeLauncher:
    """Starts "engines" that are pools of one healthy fake engine, when `gate` opens."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.operator_run: set[str] = set()
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False
        self.client = httpx.AsyncClient()

    def owns(self, digest: str) -> bool:
        return digest not in self.operator_run

    async def start(self, digest: str) -> Running:
        self.started.append(digest)
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("vLLM exited with code 1 (/secret/path)")
        engine = Engine(url=f"http://{digest[:4]}.test", healthy=True)
        pool = EnginePool([engine], self.client, expect=EngineExpectation(digest, 0), max_resident=1)

        async def stop() -> None:
            self.stopped.append(digest)

        return Running(pool, stop)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def launcher() -> AsyncIterator[FakeLauncher]:
    fake = FakeLauncher()
    yield fake
    await fake.client.aclose()


def engines(launcher: FakeLauncher, clock: Clock | None = None, **kwargs: float) -> DedicatedEngines:
    settings = {"max_engines": 2, "idle_s": 60.0, "cold_start_wait_s": 5.0, **kwargs}
    return DedicatedEngines(launcher, clock=clock or Clock(), **settings)  # type: ignore[arg-type]


async def test_many_first_requests_share_one_start(launcher: FakeLauncher) -> None:
    launcher.gate.clear()
    manager = engines(launcher)
    waiting = [asyncio.create_task(manager.pool_for(A, "support")) for _ in range(20)]
    await asyncio.sleep(0.05)
    assert launcher.started == [A]
    launcher.gate.set()
    pools = await asyncio.gather(*waiting)
    assert all(p is pools[0] for p in pools) and launcher.started == [A]
    assert await manager.pool_for(A, "support") is pools[0]
    await manager.close()


async def test_a_start_longer_than_the_wait_is_a_503_with_retry_after(launcher: FakeLauncher) -> None:
    launcher.gate.clear()
    started: list[tuple[float, bool]] = []
    manager = engines(launcher, cold_start_wait_s=0.05)
    manager.on_cold_start = lambda s, ok: started.append((s, ok))
    with pytest.raises(TailorError) as info:
        await manager.pool_for(A, "support")
    error = info.value
    assert error.status == 503 and error.code == "model_starting"
    assert int((error.headers or {})["Retry-After"]) >= 1
    assert "support" in error.message and A not in error.message
    validate(error.body(), "ErrorResponse")
    # The start goes on without the request that gave up; a retry finds it ready.
    launcher.gate.set()
    await asyncio.sleep(0.01)
    assert (await manager.pool_for(A, "support")).engines[0].url == "http://aaaa.test"
    assert launcher.started == [A] and [ok for _, ok in started] == [True]
    await manager.close()


async def test_a_failed_start_is_a_503_and_the_next_request_tries_again(launcher: FakeLauncher) -> None:
    launcher.fail = True
    manager = engines(launcher)
    with pytest.raises(TailorError) as info:
        await manager.pool_for(A, "support")
    assert info.value.status == 503 and info.value.code == "model_start_failed"
    assert "/secret/path" not in info.value.message
    launcher.fail = False
    await manager.pool_for(A, "support")
    assert launcher.started == [A, A]
    await manager.close()


async def test_an_idle_engine_stops_and_comes_back_on_the_next_request(launcher: FakeLauncher) -> None:
    clock = Clock()
    manager = engines(launcher, clock, idle_s=60.0)
    pool = await manager.pool_for(A, "support")
    lease = await pool.acquire(None)
    clock.now += 120
    assert await manager.reap() == 0  # a request is running on it
    pool.release(lease)  # the release counts as use
    clock.now += 59
    assert await manager.reap() == 0 and launcher.stopped == []
    clock.now += 2
    assert await manager.reap() == 1 and launcher.stopped == [A]
    assert manager.stats() == []
    await manager.pool_for(A, "support")
    assert launcher.started == [A, A]
    await manager.close()


async def test_a_start_longer_than_the_idle_time_does_not_make_the_engine_idle(launcher: FakeLauncher) -> None:
    clock = Clock()
    launcher.gate.clear()
    manager = engines(launcher, clock, idle_s=60.0, cold_start_wait_s=0.01)
    with pytest.raises(TailorError):
        await manager.pool_for(A, "support")
    clock.now += 300  # the start took five minutes; the client that asked gave up meanwhile
    launcher.gate.set()
    await asyncio.sleep(0.01)
    assert await manager.reap() == 0 and launcher.stopped == []
    await manager.close()


async def test_the_bound_stops_the_least_recently_used_idle_engine(launcher: FakeLauncher) -> None:
    clock = Clock()
    manager = engines(launcher, clock, max_engines=2)
    await manager.pool_for(A, "a")
    clock.now += 1
    await manager.pool_for(B, "b")
    clock.now += 1
    await manager.pool_for(A, "a")  # A is now the more recently used
    clock.now += 1
    await manager.pool_for(C, "c")
    assert launcher.stopped == [B]
    assert {s["model_digest"] for s in manager.stats()} == {A, C}
    await manager.close()


async def test_when_every_engine_is_busy_a_new_model_waits_its_turn(launcher: FakeLauncher) -> None:
    manager = engines(launcher, max_engines=1)
    pool = await manager.pool_for(A, "a")
    lease = await pool.acquire(None)
    with pytest.raises(TailorError) as info:
        await manager.pool_for(B, "b")
    assert info.value.status == 503 and info.value.code == "model_capacity"
    assert "Retry-After" in (info.value.headers or {})
    assert launcher.started == [A] and launcher.stopped == []
    pool.release(lease)
    await manager.pool_for(B, "b")
    assert launcher.stopped == [A]
    await manager.close()


async def test_operator_run_engines_neither_count_nor_stop(launcher: FakeLauncher) -> None:
    clock = Clock()
    launcher.operator_run = {B}
    manager = engines(launcher, clock, max_engines=1)
    await manager.pool_for(A, "a")
    await manager.pool_for(B, "b")
    assert launcher.stopped == []
    clock.now += 3600
    assert await manager.reap() == 1 and launcher.stopped == [A]
    assert [s["model_digest"] for s in manager.stats()] == [B]
    await manager.close()
    assert launcher.stopped == [A, B]  # shutdown detaches from it too (its monitor)


async def test_no_child_engines_allowed_is_a_clear_503(launcher: FakeLauncher) -> None:
    manager = engines(launcher, max_engines=0)
    with pytest.raises(TailorError) as info:
        await manager.pool_for(A, "support")
    assert info.value.status == 503 and "TAILOR_MAX_DEDICATED_ENGINES" in info.value.message
    assert launcher.started == []


async def test_close_stops_a_start_in_progress(launcher: FakeLauncher) -> None:
    launcher.gate.clear()
    manager = engines(launcher, cold_start_wait_s=0.01)
    with pytest.raises(TailorError):
        await manager.pool_for(A, "support")
    await manager.close()
    assert manager.stats() == [] and launcher.started == [A]


def test_operator_run_engines_are_named_by_digest(tmp_path: Path) -> None:
    urls = Settings(data_dir=tmp_path, dedicated_engine_urls={A: "http://gpu-7:8000/"}).dedicated_engine_urls
    assert urls == {A: "http://gpu-7:8000"}
    for bad in ({"support@v2": "http://gpu-7:8000"}, {A: "gpu-7:8000"}):
        with pytest.raises(ValidationError):
            Settings(data_dir=tmp_path, dedicated_engine_urls=bad)


def test_a_full_models_child_engine_is_sized_to_share_the_machine(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, dedicated_engine_threads=1, dedicated_kv_cache_gib=1, engine_port=8123)
    launch = EngineLaunch.dedicated(settings, model_path=tmp_path / "m", served_name=A)
    command = launch.command()
    assert command[command.index("--served-model-name") + 1] == A
    assert command[command.index("--port") + 1] == "0"  # any free port, never the base engine's
    assert "--enable-lora" not in command and "--enforce-eager" in command
    env = launch.env("key")
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind" and env["OMP_NUM_THREADS"] == "1"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and env["VLLM_API_KEY"] == "key"
    assert launch.log_file.name == f"engine-{A[:12]}.log"
