"""Several gateway processes on one host: `tailor serve --workers N` (TAILOR_WORKERS).

One Python process uses about one core for the gateway's own work, so a host with more cores
runs N gateway processes on one listening socket, under uvicorn's multiprocess manager (it
restarts a worker that dies; SIGTERM to the parent stops them all). The workers share only
the database and the stores. What must exist once per host stays in the parent
(`HostProcesses`): the child engine and its supervisor, the trainer child and the retention
loop.

- To the workers, the parent's child engine is an operator-run engine: its URL and the host's
  random key reach them in their environment only, never on a command line. Each worker's pool
  checks it like any engine, and also that the process listening on its port is under this
  `tailor serve` (`HostEngineOwner`), so a stranger that takes the port while the engine
  restarts is never sent a request. When the supervisor restarts the engine (same port), each
  worker's health checks see it go down and come back and re-load that worker's adapters.
- Batches are claimed with database leases (gateway/batches/lease.py), so the workers share
  them like replicas do; each worker runs up to TAILOR_BATCH_MAX_ACTIVE of them.
- Prometheus metrics are aggregated across the workers by prometheus_client's multiprocess mode,
  in a directory made fresh for each `serve` and removed when it stops (gateway/metrics/shared.py).

TAILOR_WORKERS=1 runs today's single process instead (gateway.cli's `serve`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import replace
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI

from adapters.engine_checks import EngineExpectation, Problem
from adapters.engines import Engine, EnginePool
from adapters.ports import listener_under, pick_free_port
from adapters.supervisor import EngineLaunch, EngineSupervisor
from core import sealing
from core.config import Settings
from core.db import Database, migrate
from gateway import privacy
from gateway.metrics import MULTIPROC_DIR_ENV
from gateway.trainer_process import TrainerProcess, settings_env

log = logging.getLogger("tailor.workers")

# Set in a worker's environment when its engine is the parent's child engine: the parent's pid.
PARENT_PID_ENV = "TAILOR_WORKER_PARENT_PID"
LOG_LEVEL_ENV = "TAILOR_WORKER_LOG_LEVEL"
APP_FACTORY = "gateway.workers:worker_app"

T = TypeVar("T")


def uvicorn_options(log_level: str) -> dict[str, Any]:
    """How `tailor serve` runs uvicorn, with one process or several."""
    return {
        "log_level": log_level,
        "access_log": False,
        # Forwarded headers are trusted only from TAILOR_TRUSTED_PROXIES (gateway.app), never
        # uvicorn's default of 127.0.0.1.
        "proxy_headers": False,
        "timeout_graceful_shutdown": 30,
    }


def configure_logging(settings: Settings, level: str) -> None:
    if settings.log_format == "json":
        from gateway.telemetry import JsonFormatter

        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level.upper(), handlers=[handler])
    else:
        logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO: one line per engine call costs gateway CPU on the hot
    # path and says nothing the interaction log does not.
    if logging.getLogger().getEffectiveLevel() >= logging.INFO:
        logging.getLogger("httpx").setLevel(logging.WARNING)


class HostEngineOwner:
    """A worker's check that its engine is the child engine of this `tailor serve`: a process
    under the parent listens on the engine's port. Seen once, that process is trusted while
    it runs; after it ends (engine restarted or gone) the port's listener is looked up again."""

    def __init__(self, parent_pid: int, port: int) -> None:
        self.parent_pid = parent_pid
        self.port = port
        self._listener: Any = None  # psutil.Process

    def __call__(self) -> Problem | None:
        import psutil

        if self._listener is not None and self._listener.is_running():
            return None
        self._listener = None
        pid = listener_under(self.parent_pid, self.port)
        if pid is None:
            return Problem("the host's child engine is not running (restarting, or tailor serve is stopping)")
        with contextlib.suppress(psutil.Error):
            self._listener = psutil.Process(pid)
        return None


class HostProcesses:
    """What runs once per host, in the parent: the supervised child engine (unless
    TAILOR_ENGINE_URLS names engines), the trainer child (TAILOR_RUN_TRAINER) and retention."""

    def __init__(self, settings: Settings, launch: EngineLaunch | None = None) -> None:
        self.settings = settings
        self.client = httpx.AsyncClient(timeout=5.0)
        self.supervisor: EngineSupervisor | None = None
        if not settings.engine_urls:
            launch = launch or EngineLaunch.from_settings(settings)
            # A fixed port, so the URL the workers were given stays right across restarts.
            launch = launch if launch.port else replace(launch, port=pick_free_port(launch.host))
            engine = Engine(url=launch.url)
            # The supervisor reports exits to a pool; the workers' own pools route requests.
            pool = EnginePool(
                [engine],
                self.client,
                expect=EngineExpectation(settings.base_model_name, settings.engine_max_lora_rank),
                max_resident=1,
            )
            self.supervisor = EngineSupervisor(launch, pool, engine)
        self.trainer = (
            TrainerProcess(settings.data_dir / "logs" / "trainer.log", settings) if settings.run_trainer else None
        )
        self.db = Database.from_settings(settings)
        self._retention: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.start()
        if self.trainer is not None:
            await self.trainer.start()
        self._retention = asyncio.create_task(
            privacy.retention_loop(self.db, interval_s=self.settings.retention_interval_s), name="retention"
        )

    async def stop(self) -> None:
        if self._retention is not None:
            self._retention.cancel()
            await asyncio.gather(self._retention, return_exceptions=True)
        if self.trainer is not None:
            await self.trainer.stop()
        if self.supervisor is not None:
            await self.supervisor.stop()
        await self.client.aclose()
        self.db.dispose()

    def worker_env(self, *, log_level: str, metrics_dir: str, parent_pid: int) -> dict[str, str]:
        """The workers' environment on top of the parent's: every setting as the parent resolved
        it (command-line options included), the host's engine as their only engine, no trainer."""
        env = settings_env(self.settings, withheld=frozenset())
        env.update({"TAILOR_RUN_TRAINER": "false", LOG_LEVEL_ENV: log_level, MULTIPROC_DIR_ENV: metrics_dir})
        if self.supervisor is not None:
            env["TAILOR_ENGINE_URLS"] = self.supervisor.launch.url
            env["TAILOR_ENGINE_API_KEY"] = self.supervisor.api_key
            env[PARENT_PID_ENV] = str(parent_pid)
        return env


def worker_app() -> FastAPI:
    """uvicorn's app factory in each worker: the gateway on the engines its environment names."""
    from gateway.app import create_app
    from gateway.services import Services

    settings = Settings()
    configure_logging(settings, os.environ.get(LOG_LEVEL_ENV, "info"))
    services = Services(settings)
    parent = os.environ.get(PARENT_PID_ENV)
    if parent:
        engine = services.pool.engines[0]
        engine.owner_check = HostEngineOwner(int(parent), urlsplit(engine.url).port or 80)
    return create_app(services=services, retention=False)


class _LoopThread:
    """An event loop on a thread of the parent: uvicorn's manager owns the main thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tailor-host", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@contextlib.contextmanager
def metrics_dir() -> Iterator[str]:
    """A fresh multiprocess-metrics directory for one `serve`, removed when it stops."""
    path = tempfile.mkdtemp(prefix="tailor-metrics-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_workers(settings: Settings, workers: int, log_level: str) -> int:
    """The parent: host processes first, then `workers` gateway processes until SIGTERM or
    SIGINT; returns the exit status (3, uvicorn's, when a worker could not start)."""
    from uvicorn import Config
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    # Once, here: the workers would otherwise race each other to migrate and to create the key file.
    migrate(settings.database_url or "")
    sealing.secret(settings)
    host = HostProcesses(settings)
    loop = _LoopThread()
    try:
        with metrics_dir() as directory:
            loop.run(host.start())
            try:
                os.environ.update(host.worker_env(log_level=log_level, metrics_dir=directory, parent_pid=os.getpid()))
                config = Config(
                    APP_FACTORY,
                    factory=True,
                    workers=workers,
                    host=settings.host,
                    port=settings.port,
                    **uvicorn_options(log_level),
                )
                manager = Multiprocess(config, sockets=[config.bind_socket()])
                manager.run()
            finally:
                loop.run(host.stop())
    finally:
        loop.close()
    failed = any(p.exitcode == STARTUP_FAILURE for p in manager.processes)
    return STARTUP_FAILURE if failed else 0
