"""The engines Tailor sends requests to, and which adapters are resident on each.

An engine is a vLLM OpenAI server (a supervised child process or a URL). Engines hold
only caches: the pool loads an adapter on first use, keeps at most `max_resident` per
engine (least recently used ones are unloaded), lets concurrent first requests share one
load, and routes an adapter's requests to the same healthy engine so it stays warm.
Every call to an engine carries its `headers` (its key); an engine takes traffic only
while `adapters.engine_checks` finds nothing wrong with it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import httpx
from pydantic import SecretStr

from adapters.engine_checks import EngineExpectation, Problem, find_problem, load_call
from core.errors import TailorError, unavailable

log = logging.getLogger("tailor.engines")


@dataclass(frozen=True)
class LoraRef:
    """An adapter version as the engine knows it. `name` is internal, never shown to clients."""

    name: str
    local_path: Callable[[], str]


def bearer(key: SecretStr | str | None) -> dict[str, str]:
    """The headers that carry an engine's key (vLLM's --api-key); none without one."""
    if key is None:
        return {}
    secret = key.get_secret_value() if isinstance(key, SecretStr) else key
    return {"Authorization": f"Bearer {secret}"} if secret else {}


@dataclass
class Engine:
    url: str
    # Sent with every request to this engine (its key); never logged.
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    # For a child engine: its supervisor's check that the process answering is the one it started.
    owner_check: Callable[[], Problem | None] | None = field(default=None, repr=False)
    # Why it takes no traffic now (None while healthy), as /ready shows it.
    problem: str | None = None
    healthy: bool = False
    inflight: int = 0
    background_inflight: int = 0  # of `inflight`: batch requests (Lease.background)
    # False once the engine refused a request's `priority` field (an engine an operator runs
    # without `--scheduling-policy priority` that says so): batch requests then go without.
    takes_priority: bool = True
    # name -> path ("": the engine fetched it by name), least recently used first
    resident: OrderedDict[str, str] = field(default_factory=OrderedDict)
    users: dict[str, int] = field(default_factory=dict)  # name -> requests running on it
    loading: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    loads: int = 0
    evictions: int = 0
    # Set while the engine is known to be down for a restart, so requests fail fast.
    restarting: bool = False

    def score(self, name: str) -> int:
        # Rendezvous hashing: each adapter prefers one engine; when it is down, the next.
        return int.from_bytes(hashlib.blake2b(f"{name}@{self.url}".encode(), digest_size=8).digest(), "big")


class PoolObserver(Protocol):
    """Told about adapter loads and evictions (metrics, traces); must not raise or block.

    Called in the task doing the work: for a load a request triggered, that task runs in
    the request's context.
    """

    def adapter_loaded(self, engine: str, name: str, seconds: float, ok: bool) -> None: ...

    def adapter_evicted(self, engine: str, name: str) -> None: ...


class _Unobserved:
    def adapter_loaded(self, engine: str, name: str, seconds: float, ok: bool) -> None:
        pass

    def adapter_evicted(self, engine: str, name: str) -> None:
        pass


@dataclass
class Lease:
    engine: Engine
    lora: str | None
    background: bool = False  # a batch request, which yields to interactive ones

    @property
    def url(self) -> str:
        return self.engine.url


class EnginePool:
    def __init__(
        self,
        engines: Sequence[Engine | str],
        client: httpx.AsyncClient,
        *,
        expect: EngineExpectation,
        max_resident: int,
        health_interval_s: float = 2.0,
        observer: PoolObserver | None = None,
    ) -> None:
        self.engines = [e if isinstance(e, Engine) else Engine(url=e) for e in engines]
        for e in self.engines:
            e.url = e.url.rstrip("/")
        self.client = client
        self.expect = expect
        self.max_resident = max(1, max_resident)
        self.health_interval_s = health_interval_s
        self.observer: PoolObserver = observer or _Unobserved()
        self._monitor: asyncio.Task[None] | None = None
        self._release_listeners: list[Callable[[], None]] = []

    # --- health -------------------------------------------------------------
    async def check(self, engine: Engine) -> bool:
        """Health and identity; an engine coming (back) up is verified in full first."""
        problem = await find_problem(self.client, engine, self.expect, thorough=not engine.healthy)
        if problem is None and not engine.healthy:
            log.info("engine %s is healthy", engine.url)
            engine.healthy = True
            engine.restarting = False
            engine.problem = None
            await self._reload_resident(engine)
        elif problem is not None:
            self._note_problem(engine, problem)
            if engine.healthy:
                self.mark_down(engine)
        return problem is None

    @staticmethod
    def _note_problem(engine: Engine, problem: Problem) -> None:
        # Logged when it changes, not on every check of an engine that stays down.
        if problem.reason != engine.problem:
            level = logging.ERROR if problem.serious else logging.WARNING
            log.log(level, "%s%s", problem.reason, f" ({problem.detail})" if problem.detail else "")
        engine.problem = problem.reason

    def mark_down(self, engine: Engine) -> None:
        if engine.healthy:
            log.warning("engine %s is down", engine.url)
        engine.healthy = False
        for task in engine.loading.values():
            task.cancel()
        engine.loading.clear()

    async def wait_healthy(self, timeout_s: float, *, all_engines: bool = True) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            states = [await self.check(e) for e in self.engines]
            if all(states) if all_engines else any(states):
                return
            if time.monotonic() > deadline:
                down = [e.problem or e.url for e, ok in zip(self.engines, states, strict=False) if not ok]
                raise TimeoutError(f"engines not healthy after {timeout_s:.0f}s: {'; '.join(down)}")
            await asyncio.sleep(0.5)

    def start_monitor(self) -> None:
        self._monitor = asyncio.create_task(self._monitor_loop(), name="engine-health")

    async def stop_monitor(self) -> None:
        if self._monitor:
            self._monitor.cancel()
            await asyncio.gather(self._monitor, return_exceptions=True)

    async def _monitor_loop(self) -> None:
        while True:
            await asyncio.gather(*(self.check(e) for e in self.engines), return_exceptions=True)
            await asyncio.sleep(self.health_interval_s)

    async def _reload_resident(self, engine: Engine) -> None:
        """An engine that came back (restart) has lost its adapters: load them again."""
        names = list(engine.resident.items())
        engine.resident.clear()
        for name, path in names:
            try:
                await self._load(engine, name, path)
                engine.resident[name] = path
            except (TailorError, httpx.HTTPError) as exc:
                log.warning("could not reload adapter %s on %s: %s", name, engine.url, exc)

    # --- choosing an engine ---------------------------------------------------
    def pick(self, lora: str | None) -> Engine:
        healthy = [e for e in self.engines if e.healthy and not e.restarting]
        if not healthy:
            raise unavailable("No inference engine is available right now; retry shortly.")
        if lora is None:
            return min(healthy, key=lambda e: e.inflight)
        # Where it is loaded already; on several (its home engine came back after a
        # failover), the preferred one, so it goes home and the spare copy ages out.
        resident = [e for e in healthy if lora in e.resident]
        return max(resident or healthy, key=lambda e: e.score(lora))

    async def acquire(self, lora: LoraRef | None, *, background: bool = False) -> Lease:
        """A place on an engine with `lora` resident; `background` for batch requests. An
        engine that went away while the adapter loaded (marked down by then) is left for
        another, once."""
        engine = self.pick(lora.name if lora else None)
        try:
            return await self._lease(engine, lora, background)
        except TailorError as exc:
            if exc.code != "engine_unavailable" or engine.healthy:
                raise
        return await self._lease(self.pick(lora.name if lora else None), lora, background)

    async def _lease(self, engine: Engine, lora: LoraRef | None, background: bool) -> Lease:
        if lora is not None:
            # Counted as a user before waiting for the load: otherwise another load's
            # eviction can unload it between its load finishing and this request resuming.
            engine.users[lora.name] = engine.users.get(lora.name, 0) + 1
            try:
                await self.ensure_loaded(engine, lora)
            except BaseException:
                self._unuse(engine, lora.name)
                raise
            if lora.name in engine.resident:
                engine.resident.move_to_end(lora.name)
        engine.inflight += 1
        engine.background_inflight += int(background)
        return Lease(engine=engine, lora=lora.name if lora else None, background=background)

    def release(self, lease: Lease) -> None:
        lease.engine.inflight -= 1
        lease.engine.background_inflight -= int(lease.background)
        if lease.lora is not None:
            self._unuse(lease.engine, lease.lora)
        for listener in self._release_listeners:
            listener()

    def on_release(self, listener: Callable[[], None]) -> None:
        """Call `listener` (on the event loop; it must not block) whenever a lease goes back."""
        self._release_listeners.append(listener)

    def foreground_inflight(self) -> int:
        """Interactive (not background) requests holding an engine of this pool now."""
        return sum(e.inflight - e.background_inflight for e in self.engines)

    @staticmethod
    def _unuse(engine: Engine, name: str) -> None:
        left = engine.users.get(name, 1) - 1
        if left:
            engine.users[name] = left
        else:
            engine.users.pop(name, None)

    def forget(self, engine: Engine, name: str) -> None:
        """The engine says it does not know `name` (it restarted behind our back)."""
        engine.resident.pop(name, None)

    # --- residency ----------------------------------------------------------
    async def ensure_loaded(self, engine: Engine, lora: LoraRef) -> None:
        if lora.name in engine.resident:
            return
        task = engine.loading.get(lora.name)
        if task is None:
            task = asyncio.create_task(self._load_new(engine, lora))
            engine.loading[lora.name] = task
            task.add_done_callback(lambda _t, e=engine, n=lora.name: e.loading.pop(n, None))
        # Shielded: a client that disconnects must not cancel a load others wait on.
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():  # the load was abandoned (mark_down), not this request
                raise unavailable("The inference engine went down; retry shortly.") from None
            raise

    async def _load_new(self, engine: Engine, lora: LoraRef) -> None:
        await self._make_room(engine)
        # An engine that fetches adapters by name needs no copy on this host.
        path = "" if self.expect.fetches_adapters else await asyncio.to_thread(lora.local_path)
        await self._load(engine, lora.name, path)
        engine.resident[lora.name] = path
        engine.loads += 1

    async def _make_room(self, engine: Engine) -> None:
        while len(engine.resident) + len(engine.loading) > self.max_resident:
            victim = next((n for n in engine.resident if not engine.users.get(n)), None)
            if victim is None:
                # Every resident adapter has requests running: going over the limit for a
                # moment beats making this request wait for one of them to finish.
                return
            engine.resident.pop(victim)
            engine.evictions += 1
            self.observer.adapter_evicted(engine.url, victim)
            await self._unload(engine, victim)

    async def unload(self, names: Iterable[str]) -> int:
        """Unload these adapters from every engine holding them (versions deleted, tenants
        purged); returns how many copies went. Requests already running on one finish: vLLM
        only forgets the name, and the next request for it is refused before it gets here."""
        wanted = set(names)
        unloaded = 0
        for engine in self.engines:
            for name in [n for n in engine.resident if n in wanted]:
                engine.resident.pop(name, None)
                self.observer.adapter_evicted(engine.url, name)
                unloaded += 1
                await self._unload(engine, name)
        return unloaded

    async def _unload(self, engine: Engine, name: str) -> None:
        # Forgotten here whatever the engine answers: one that is down has lost its adapters
        # anyway, and one that refuses holds a copy nothing routes to any more.
        try:
            resp = await self._post(engine, "/v1/unload_lora_adapter", {"lora_name": name})
        except TailorError as exc:
            log.warning("unload of %s on %s failed: %s", name, engine.url, exc.message)
            return
        if resp.status_code >= 400:
            log.warning("unload of %s on %s failed: %s %s", name, engine.url, resp.status_code, resp.text[:300])

    async def _load(self, engine: Engine, name: str, path: str) -> None:
        started = time.perf_counter()
        ok = False
        try:
            by_name = self.expect.fetches_adapters
            resp = await self._post(engine, *load_call(name, path, by_name=by_name))
            # "Already loaded": the engine kept it across our own restart; that is a success.
            if resp.status_code >= 400 and "already been loaded" not in resp.text:
                # The engine's words name internal adapter ids and paths: the log gets them, callers do not.
                log.warning(
                    "engine %s refused to load adapter %s: %s %s", engine.url, name, resp.status_code, resp.text[:500]
                )
                # A name the engine could not fetch is the gateway's side failing, not the request.
                failed_here = resp.status_code >= 500 or (by_name and resp.status_code == 404)
                raise TailorError(
                    502 if failed_here else 400,
                    "The inference engine could not load this model's adapter.",
                    code="engine_error",
                )
            ok = True
        finally:
            self.observer.adapter_loaded(engine.url, name, time.perf_counter() - started, ok)
        log.info("loaded adapter %s on %s in %.0f ms", name, engine.url, (time.perf_counter() - started) * 1000)

    async def _post(self, engine: Engine, route: str, body: dict[str, str]) -> httpx.Response:
        try:
            return await self.client.post(f"{engine.url}{route}", json=body, headers=engine.headers, timeout=120.0)
        except httpx.TransportError as exc:
            self.mark_down(engine)
            raise unavailable("The inference engine is not reachable; retry shortly.") from exc

    def stats(self) -> list[dict[str, object]]:
        return [
            {
                "url": e.url,
                "healthy": e.healthy,
                "inflight": e.inflight,
                "batch_inflight": e.background_inflight,
                "resident_adapters": len(e.resident),
                "loads": e.loads,
                "evictions": e.evictions,
            }
            for e in self.engines
        ]


async def run_with_lease(pool: EnginePool, lora: LoraRef | None, call: Callable[[Lease], Awaitable[object]]) -> object:
    lease = await pool.acquire(lora)
    try:
        return await call(lease)
    finally:
        pool.release(lease)
