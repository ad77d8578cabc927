"""Engines of their own for full-model versions: started on first use, stopped when idle.

A model version of kind "model" (core.states.VersionKind) is a complete checkpoint, so it is
served by a vLLM server of its own rather than as an adapter on the base model's engines. One
engine serves every version with the same files (they are keyed by digest). Each is an
`EnginePool` of one engine, so requests lease from it exactly as from the base pool.

- **Single flight**: the first request for a digest starts its engine; every request that
  arrives meanwhile waits on that same start.
- **Cold starts**: a request waits at most `cold_start_wait_s`, then gets 503 with
  `Retry-After` (the start goes on; a retry finds the engine ready). Each start's duration
  goes to the observer (a Prometheus histogram) and the log.
- **Scale to zero**: an engine without requests for `idle_s` is stopped.
- **Bound**: at most `max_engines` child engines run; starting another stops the least
  recently used idle one. When none is idle, the request gets 503 with `Retry-After`.
- Operator-run servers (`Launcher.owns` is False for their digests) are attached on first
  use like a child, but never count against the bound and are never stopped.

How an engine starts is a `Launcher`'s business (`ChildLauncher`: a supervised child
process, reusing adapters.supervisor, or a URL); this module only decides when.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from adapters.engine_checks import EngineExpectation
from adapters.engines import Engine, EnginePool, bearer
from adapters.store import AdapterStore
from adapters.supervisor import EngineLaunch, EngineSupervisor, child_engine
from core.config import Settings
from core.errors import TailorError

log = logging.getLogger("tailor.dedicated")

# Retry-After before a first start has been measured.
_FIRST_START_GUESS_S = 30.0


@dataclass
class Running:
    """A started, healthy engine of one model."""

    pool: EnginePool
    stop: Callable[[], Awaitable[None]]


class Launcher(Protocol):
    def owns(self, digest: str) -> bool:
        """Whether this model's engine is a child Tailor starts and stops (else operator-run)."""
        ...

    async def start(self, digest: str) -> Running:
        """Start (or attach to) the model's engine and return once it takes requests."""
        ...


ColdStartObserver = Callable[[float, bool], None]  # (seconds, ok)


@dataclass
class _Slot:
    digest: str
    owned: bool
    task: asyncio.Task[Running]
    started: float  # time.monotonic() when its start began
    last_used: float
    running: Running | None = None

    @property
    def inflight(self) -> int:
        return sum(e.inflight for e in self.running.pool.engines) if self.running else 0


@dataclass
class DedicatedEngines:
    launcher: Launcher
    max_engines: int
    idle_s: float
    cold_start_wait_s: float
    on_cold_start: ColdStartObserver = lambda seconds, ok: None
    clock: Callable[[], float] = time.monotonic
    slots: dict[str, _Slot] = field(default_factory=dict)
    last_start_s: float | None = None
    starts: int = 0
    stops: int = 0
    _reaper: asyncio.Task[None] | None = None
    _stopping: set[asyncio.Task[None]] = field(default_factory=set)

    # --- the hot path ----------------------------------------------------------------
    async def pool_for(self, digest: str, public_name: str) -> EnginePool:
        """The pool of `digest`'s engine, started if need be; 503 with Retry-After while it starts."""
        slot = self.slots.get(digest)
        if slot is None:
            slot = self._begin(digest, public_name)
        slot.last_used = self.clock()
        if slot.running is not None:
            return slot.running.pool
        try:
            running = await asyncio.wait_for(asyncio.shield(slot.task), self.cold_start_wait_s)
        except Exception:
            if not slot.task.done():  # still starting: this request has waited long enough
                raise self._starting(public_name, slot) from None
            # The start failed (logged with its reason); its words name paths and ports.
            raise TailorError(
                503,
                f"Model '{public_name}' could not be started on an engine; try again shortly.",
                code="model_start_failed",
            ) from None
        slot.last_used = self.clock()
        return running.pool

    def _begin(self, digest: str, public_name: str) -> _Slot:
        """Start `digest`'s engine; synchronous up to the task, so concurrent requests share it."""
        owned = self.launcher.owns(digest)
        victims = self._make_room(public_name) if owned else []
        now = self.clock()
        task = asyncio.create_task(self._start(digest, victims), name=f"dedicated-start-{digest[:12]}")
        slot = _Slot(digest=digest, owned=owned, task=task, started=now, last_used=now)
        self.slots[digest] = slot
        task.add_done_callback(lambda t, s=slot: self._started(s, t))
        return slot

    def _make_room(self, public_name: str) -> list[_Slot]:
        """The slots to stop so that one more child engine fits (taken out of `slots` now)."""
        if self.max_engines <= 0:
            raise TailorError(
                503,
                f"Model '{public_name}' has no engine to run on (TAILOR_MAX_DEDICATED_ENGINES is 0).",
                code="model_unavailable",
            )
        owned = [s for s in self.slots.values() if s.owned]
        excess = len(owned) + 1 - self.max_engines
        if excess <= 0:
            return []
        idle = sorted((s for s in owned if s.running is not None and s.inflight == 0), key=lambda s: s.last_used)
        if len(idle) < excess:
            raise TailorError(
                503,
                f"Every engine for full models is busy; model '{public_name}' can start once one is free.",
                code="model_capacity",
                headers={"Retry-After": str(self._retry_after(None))},
            )
        victims = idle[:excess]
        for victim in victims:
            del self.slots[victim.digest]
        return victims

    async def _start(self, digest: str, victims: list[_Slot]) -> Running:
        for victim in victims:
            log.info(
                "stopping the engine of model %s (least recently used) to start %s", victim.digest[:12], digest[:12]
            )
            await self._stop(victim)
        began = time.perf_counter()
        try:
            running = await self.launcher.start(digest)
        except BaseException:
            self.on_cold_start(time.perf_counter() - began, False)
            raise
        seconds = time.perf_counter() - began
        self.on_cold_start(seconds, True)
        self.last_start_s = seconds
        log.info("engine of model %s started in %.1f s", digest[:12], seconds)
        return running

    def _started(self, slot: _Slot, task: asyncio.Task[Running]) -> None:
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                log.error("engine of model %s failed to start: %s", slot.digest[:12], task.exception())
            # A failed start is forgotten: the next request tries again.
            if self.slots.get(slot.digest) is slot:
                del self.slots[slot.digest]
            return
        slot.running = task.result()
        # Idle from now: a start longer than idle_s must not make a fresh engine look idle.
        slot.last_used = self.clock()
        self.starts += 1
        slot.running.pool.on_release(lambda s=slot: self._touch(s))

    def _touch(self, slot: _Slot) -> None:
        slot.last_used = self.clock()

    def _starting(self, public_name: str, slot: _Slot) -> TailorError:
        wait = self._retry_after(slot)
        return TailorError(
            503,
            f"Model '{public_name}' is starting on its engine; retry in about {wait} s.",
            code="model_starting",
            headers={"Retry-After": str(wait)},
        )

    def _retry_after(self, slot: _Slot | None) -> int:
        expected = self.last_start_s or _FIRST_START_GUESS_S
        elapsed = self.clock() - slot.started if slot is not None else 0.0
        # A start running late (a busy host) is asked about every quarter of the expected
        # time, not every second: clients that honour Retry-After would otherwise spin.
        return max(1, math.ceil(expected - elapsed), math.ceil(expected / 4))

    # --- scale to zero --------------------------------------------------------------
    def start_reaper(self) -> None:
        self._reaper = asyncio.create_task(self._reap_loop(), name="dedicated-reaper")

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(min(self.idle_s / 4, 5.0))
            await self.reap()

    async def reap(self) -> int:
        """Stop every child engine idle for `idle_s`; returns how many stopped."""
        now = self.clock()
        idle = [
            s
            for s in self.slots.values()
            if s.owned and s.running is not None and s.inflight == 0 and now - s.last_used >= self.idle_s
        ]
        for slot in idle:
            del self.slots[slot.digest]
        for slot in idle:
            log.info("engine of model %s idle for %.0f s: stopping it", slot.digest[:12], now - slot.last_used)
            await self._stop(slot)
        return len(idle)

    async def _stop(self, slot: _Slot) -> None:
        self.stops += 1
        if slot.running is not None:
            try:
                await slot.running.stop()
            except Exception:
                log.exception("stopping the engine of model %s failed", slot.digest[:12])

    async def close(self) -> None:
        """Stop everything (gateway shutdown), starts in progress included."""
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        slots, self.slots = list(self.slots.values()), {}
        for slot in slots:
            if slot.running is None:
                slot.task.cancel()
                with contextlib.suppress(BaseException):
                    slot.running = await slot.task
            await self._stop(slot)

    def stats(self) -> list[dict[str, object]]:
        now = self.clock()
        return [
            {
                "model_digest": s.digest,
                "url": s.running.pool.engines[0].url if s.running else None,
                "state": "ready" if s.running else "starting",
                "inflight": s.inflight,
                "idle_s": round(now - s.last_used, 1),
                "child": s.owned,
            }
            for s in self.slots.values()
        ]


class ChildLauncher:
    """Starts a full model's engine as a supervised child process (adapters.supervisor), or
    attaches to the operator's server for it (TAILOR_DEDICATED_ENGINE_URLS)."""

    def __init__(self, settings: Settings, store: AdapterStore, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.store = store
        self.client = client

    def owns(self, digest: str) -> bool:
        return digest not in self.settings.dedicated_engine_urls

    def _pool(self, engine: Engine, digest: str) -> EnginePool:
        # The engine serves the checkpoint under its digest, and no adapters.
        expect = EngineExpectation(served_name=digest, max_lora_rank=0, probe_adapter=None)
        return EnginePool(
            [engine],
            self.client,
            expect=expect,
            max_resident=1,
            health_interval_s=self.settings.engine_health_interval_s,
        )

    async def start(self, digest: str) -> Running:
        url = self.settings.dedicated_engine_urls.get(digest)
        if url is not None:
            pool = self._pool(Engine(url=url, headers=bearer(self.settings.engine_api_key)), digest)
            await pool.wait_healthy(self.settings.engine_start_timeout_s)
            pool.start_monitor()
            return Running(pool, pool.stop_monitor)
        path = await asyncio.to_thread(self.store.local_path, digest)
        launch = EngineLaunch.dedicated(self.settings, model_path=path, served_name=digest)
        engine = child_engine(launch)
        pool = self._pool(engine, digest)
        supervisor = EngineSupervisor(launch, pool, engine)
        try:
            await supervisor.start()
            await pool.wait_healthy(self.settings.engine_start_timeout_s)
        except BaseException:
            await supervisor.stop()
            raise
        pool.start_monitor()

        async def stop() -> None:
            await pool.stop_monitor()
            await supervisor.stop()

        return Running(pool, stop)
