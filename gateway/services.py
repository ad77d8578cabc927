"""Everything a running gateway holds, built from Settings, started and stopped together."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx
from httpx_aiohttp import AiohttpTransport
from sqlalchemy.exc import DBAPIError

from adapters import registry
from adapters.dedicated import ChildLauncher, DedicatedEngines
from adapters.engine_checks import EngineExpectation
from adapters.engines import Engine, EnginePool, LoraRef, bearer
from adapters.probe_adapter import write_probe_adapter
from adapters.registry import ModelRoute, ResolvedModel, ValidationLimits
from adapters.store import AdapterStore
from adapters.supervisor import EngineLaunch, EngineSupervisor, child_engine
from core import sealing
from core.base_models import BaseModelConfig
from core.blobs import BlobStore
from core.config import Settings
from core.db import Database, migrate
from core.errors import TailorError
from core.states import VersionKind
from gateway import metrics, tenants
from gateway.auth_guard import KeyCache
from gateway.interaction_log import InteractionLog
from gateway.limits import TokenMeter
from gateway.request_policy import CacheSalts
from gateway.telemetry import Telemetry
from gateway.tenants import Caller
from gateway.trainer_process import TrainerProcess
from trainer.graders.runtime import GraderRuntime

log = logging.getLogger("tailor.gateway")

K = TypeVar("K")
V = TypeVar("V")


@dataclass
class TTLCache(Generic[K, V]):
    """Bounded-staleness cache for the two lookups every request makes (key, model).

    With several gateway replicas a revoked key or switched alias is seen by the others
    within `ttl_s`; local changes invalidate at once.
    """

    ttl_s: float
    max_items: int = 50_000
    items: dict[K, tuple[float, V]] = field(default_factory=dict)

    def get(self, key: K) -> V | None:
        hit = self.items.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def get_stale(self, key: K, grace_s: float) -> V | None:
        """The last value even if expired, up to `grace_s` past its expiry: what a lookup
        falls back on while the database cannot answer."""
        hit = self.items.get(key)
        if hit is None or hit[0] + grace_s < time.monotonic():
            return None
        return hit[1]

    def put(self, key: K, value: V) -> None:
        if len(self.items) >= self.max_items:
            self.items.clear()
        self.items[key] = (time.monotonic() + self.ttl_s, value)

    def clear(self) -> None:
        self.items.clear()


_MISSING = object()


@dataclass(frozen=True)
class Upstream:
    """Where a resolved model is served: the pool a request leases from, the adapter to make
    resident there (None: the pool's own model), and the name the engine knows the model by."""

    pool: EnginePool
    lora: LoraRef | None
    engine_model: str


def engine_client(settings: Settings) -> httpx.AsyncClient:
    """The HTTP client for engine calls: httpx's API on aiohttp's connection pool.

    httpcore's pool walks every connection on each request, so its cost grows with the number
    of requests in flight (throughput through the gateway fell by a third from 2 to 20
    concurrent clients against an instant engine); aiohttp's does not.
    """
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.engine_request_timeout_s, connect=5.0),
        limits=limits,
        transport=AiohttpTransport(limits=limits),
    )


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started_at = int(time.time())
        self.db = Database.from_settings(settings)
        self.store = AdapterStore.from_settings(settings)
        self.blobs = BlobStore.from_settings(settings)
        self.client = engine_client(settings)
        self.supervisors: list[EngineSupervisor] = []
        self.graders = GraderRuntime.from_settings(settings)  # Python grader sandbox, when enabled
        self.trainer = (
            TrainerProcess(settings.data_dir / "logs" / "trainer.log", settings) if settings.run_trainer else None
        )
        self._limits: dict[str, ValidationLimits] = {}  # per base model, read on first use
        # Metrics and traces; the engine pools report to them, so they come first.
        self.telemetry = Telemetry(settings, functools.partial(metrics.tenant_names, self.db))
        # One pool per base model, the default base's first; an adapter serves on its base's.
        self.pools = {base.name: self._base_pool(base) for base in settings.bases}
        self.pool = self.pools[settings.bases[0].name]
        # Full-model versions, on engines of their own (started on first use).
        self.dedicated = DedicatedEngines(
            ChildLauncher(settings, self.store, self.client),
            max_engines=settings.max_dedicated_engines,
            idle_s=settings.dedicated_idle_s,
            cold_start_wait_s=settings.cold_start_wait_s,
            on_cold_start=self.telemetry.dedicated_engine_started,
        )
        self.interactions = InteractionLog(
            self.db,
            batch_size=settings.log_batch_size,
            flush_interval_s=settings.log_flush_interval_s,
            max_queue=settings.log_queue_max,
            redact_all=settings.redact_pii,
        )
        self.meter = TokenMeter(self.db, flush_interval_s=settings.log_flush_interval_s)
        # Read only when /metrics is scraped.
        self.telemetry.watch(
            metrics.Scraped(
                list(self.pools.values()),
                self.dedicated,
                self.interactions,
                job_counts=functools.partial(metrics.open_job_counts, self.db),
                job_durations=functools.partial(metrics.job_durations, self.db),
            )
        )
        # Known and unknown keys apart, both bounded: random tokens cannot evict working keys.
        self.keys = KeyCache(settings.auth_cache_ttl_s)
        # The sealing secret may be read from a file: once here, never per request.
        self.cache_salts = CacheSalts(sealing.secret(settings))
        self.models: TTLCache[tuple[str, str], object] = TTLCache(settings.auth_cache_ttl_s)

    # --- lifecycle ----------------------------------------------------------
    async def start(self, *, wait_for_engines: bool = True) -> None:
        await asyncio.to_thread(migrate, self.db.url)
        self.telemetry.start()
        for sup in self.supervisors:
            await sup.start()
        self.interactions.start()
        self.meter.start()
        if self.trainer is not None:
            await self.trainer.start()
        if wait_for_engines:
            timeout_s = self.settings.engine_start_timeout_s
            await asyncio.gather(*(p.wait_healthy(timeout_s, all_engines=False) for p in self.pools.values()))
        for pool in self.pools.values():
            pool.start_monitor()
        self.dedicated.start_reaper()

    def _base_pool(self, base: BaseModelConfig) -> EnginePool:
        """The engines of one base model: a supervised child engine on its checkpoint, or its URLs."""
        settings = self.settings
        launch = self._child_launch(base) if base.child_engine else None
        engines = (
            [child_engine(launch)]
            if launch
            else [Engine(url=url, headers=bearer(base.api_key)) for url in base.engine_urls]
        )
        pool = EnginePool(
            engines,
            self.client,
            expect=EngineExpectation(
                served_name=base.name,
                max_lora_rank=settings.engine_max_lora_rank,
                # A base without a checkpoint here takes no adapters: nothing to probe with.
                probe_adapter=functools.partial(self._probe_adapter, base) if base.path else None,
                fetches_adapters=settings.engine_adapter_source == "url",
            ),
            max_resident=settings.max_resident_adapters,
            health_interval_s=settings.engine_health_interval_s,
            observer=self.telemetry,
        )
        if launch:
            self.supervisors.append(EngineSupervisor(launch, pool, pool.engines[0]))
        return pool

    def _child_launch(self, base: BaseModelConfig | None = None) -> EngineLaunch:
        launch = EngineLaunch.from_settings(self.settings)
        if base is None:
            return launch
        # Another base's child: its own checkpoint, name and log, on any free port.
        return launch.for_base(base, port=0, log_file=self.settings.data_dir / "logs" / f"engine-{base.name}.log")

    def _probe_adapter(self, base: BaseModelConfig) -> str:
        """Path of the LoRA that tests an operator-run engine takes the largest rank Tailor accepts."""
        directory = self.settings.cache_dir.resolve() / "engine-probe"
        if not base.default:
            directory = directory / "bases" / base.name
        spec = self.limits_for(base.name).base
        return str(write_probe_adapter(directory, spec, self.settings.engine_max_lora_rank))

    async def stop(self) -> None:
        for pool in self.pools.values():
            await pool.stop_monitor()
        await self.dedicated.close()
        await self.interactions.stop()
        await self.meter.stop()
        if self.trainer is not None:
            await self.trainer.stop()
        for sup in self.supervisors:
            await sup.stop()
        await self.client.aclose()
        self.telemetry.shutdown()
        self.db.dispose()

    # --- lookups on the hot path ---------------------------------------------
    # Cache hits are answered on the event loop; only misses go to a thread for the database.
    def cached_caller(self, secret: str) -> Caller | None:
        """The working key's caller if the cache knows it (no database round trip), else None."""
        hit = self.keys.get(secret)
        return hit if isinstance(hit, Caller) else None

    async def authenticate(self, secret: str) -> Caller | None:
        hit = self.keys.get(secret)
        if hit is None:
            try:
                caller = await asyncio.to_thread(tenants.authenticate, self.db, secret)
            except DBAPIError:
                hit = self._stale(self.keys, secret, "key")
            else:
                hit = caller if caller is not None else _MISSING
                self.keys.put(secret, hit)
        return None if hit is _MISSING else hit  # type: ignore[return-value]

    async def resolve(self, tenant_id: str, model: str) -> ResolvedModel:
        """The version this request uses; a canaried name is split per request."""
        if model in self.pools:
            return ResolvedModel(public_name=model, base=model)
        key = (tenant_id, model)
        hit = self.models.get(key)
        if not isinstance(hit, ModelRoute):
            try:
                hit = await asyncio.to_thread(registry.route, self.db, tenant_id, model, self.settings.base_model_name)
            except DBAPIError:
                hit = self._stale(self.models, key, "model")
            else:
                self.models.put(key, hit)
        return hit.choose(random.random())  # type: ignore[union-attr]

    def _stale(self, cache: TTLCache[Any, object] | KeyCache, key: Any, what: str) -> object:
        """While the database is away, serve what was known a moment ago (a key revoked or an
        alias switched during the outage applies once it is back); a lookup never seen
        before cannot be answered: 503, which clients retry."""
        hit = cache.get_stale(key, self.settings.db_outage_grace_s)
        self.telemetry.db_unavailable(what, served_stale=hit is not None)
        if hit is None:
            raise TailorError(503, "The database is unavailable; please retry shortly.", code="database_unavailable")
        log.warning("database unavailable: %s lookup served from a stale cache entry", what)
        return hit

    async def upstream(self, resolved: ResolvedModel) -> Upstream:
        """The lease provider of a resolved model: a full model's own engine (started on first
        use, 503 with Retry-After while it starts), else its base's pool with the adapter."""
        if resolved.kind == VersionKind.MODEL and resolved.digest is not None:
            pool = await self.dedicated.pool_for(resolved.digest, resolved.public_name)
            return Upstream(pool, None, resolved.digest)
        base = self.base_of(resolved.base)
        lora = self.lora_for(resolved)
        return Upstream(self.pools[base], lora, lora.name if lora else base)

    def lora_for(self, resolved: ResolvedModel) -> LoraRef | None:
        if resolved.version_id is None or resolved.digest is None:
            return None
        digest = resolved.digest
        return LoraRef(name=resolved.version_id, local_path=lambda: str(self.store.local_path(digest)))

    def changed(self) -> None:
        """Adapters or keys changed in this process: forget cached lookups now."""
        self.keys.clear()
        self.models.clear()

    @property
    def base_names(self) -> list[str]:
        """The base models' names, the default first."""
        return list(self.pools)

    @property
    def engines(self) -> list[Engine]:
        """Every base model's engines (not full-model versions' own)."""
        return [engine for pool in self.pools.values() for engine in pool.engines]

    def base_of(self, recorded: str | None) -> str:
        """The configured base whose pool serves a stored row recording base `recorded`."""
        return self.settings.recorded_base(recorded).name

    async def unload(self, version_ids: list[str]) -> int:
        """Unload these versions from every base's engines; how many copies went."""
        return sum([await pool.unload(version_ids) for pool in self.pools.values()])

    @property
    def limits(self) -> ValidationLimits:
        """What an adapter for the default base must be."""
        return self.limits_for(self.settings.base_model_name)

    def limits_for(self, base: str) -> ValidationLimits:
        """What an adapter for base `base` (a configured name) must be; read once per base."""
        if base not in self._limits:
            self._limits[base] = ValidationLimits.from_settings(self.settings, self.settings.base(base))
        return self._limits[base]
