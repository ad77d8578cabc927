"""`tailor serve --workers`: what the parent runs once per host and what each worker runs.

The parent's engine here is loadtests.mock_engine started by the real supervisor (the same
launch, key and restart logic as vLLM's, with the mock's command line), so the engine's
restart is real while the test stays quick. The uvicorn manager is a fake that records
what it was asked to run; tests/loadtests/test_workers_live.py runs the real thing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import psutil
import pytest

from adapters.engine_checks import EngineExpectation
from adapters.engines import Engine, EnginePool, LoraRef, bearer
from adapters.supervisor import EngineLaunch
from core import config as core_config
from core.config import Settings
from gateway import metrics, workers
from gateway.workers import HostEngineOwner, HostProcesses
from tests.ports import listening_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class MockLaunch(EngineLaunch):
    """The child engine as the supervisor starts it, but the instant mock instead of vLLM."""

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "loadtests.mock_engine",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--served-name",
            self.served_name,
        ]


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(
        data_dir=tmp_path,
        admin_key="adm-test",
        base_model_path=tmp_path / "model",
        engine_health_interval_s=0.1,
        run_trainer=False,
        **kw,
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return _settings(tmp_path)


def _launch(settings: Settings) -> MockLaunch:
    base = EngineLaunch.from_settings(settings)
    return MockLaunch(**{f: getattr(base, f) for f in base.__dataclass_fields__})


def _worker_environ(host: HostProcesses, metrics_dir: str) -> dict[str, str]:
    """The environment a worker process starts with: the parent's plus what it adds."""
    return {
        "PATH": os.environ.get("PATH", ""),
        **host.worker_env(log_level="warning", metrics_dir=metrics_dir, parent_pid=os.getpid()),
    }


def test_default_is_one_worker_per_usable_core_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core_config, "usable_cpus", lambda: 2)
    assert Settings().worker_count == 2
    monkeypatch.setattr(core_config, "usable_cpus", lambda: 96)
    assert Settings().worker_count == core_config.MAX_DEFAULT_WORKERS
    assert Settings(workers=12).worker_count == 12  # an explicit value is not capped
    assert Settings(workers=1).worker_count == 1


async def _wait(predicate: Any, timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_parent_runs_the_engine_once_and_workers_reach_it_through_their_environment(
    settings: Settings, tmp_path: Path
) -> None:
    host = HostProcesses(settings, _launch(settings))
    assert host.supervisor is not None
    await host.start()
    try:
        env = _worker_environ(host, str(tmp_path / "metrics"))
        url, key = env["TAILOR_ENGINE_URLS"], env["TAILOR_ENGINE_API_KEY"]
        assert url == host.supervisor.launch.url and host.supervisor.launch.port  # fixed: restarts keep it
        assert env["TAILOR_RUN_TRAINER"] == "false" and env[workers.PARENT_PID_ENV] == str(os.getpid())
        assert env[metrics.MULTIPROC_DIR_ENV] == str(tmp_path / "metrics")
        # The key is in the environment only, never on a command line that `ps` shows.
        engine_proc = psutil.Process(host.supervisor.process.pid)  # type: ignore[union-attr]
        assert key not in " ".join(engine_proc.cmdline())

        # What a worker builds from that environment: the parent's settings (the admin key
        # and other values included), the engine as an operator-run one, no trainer.
        with mock.patch.dict(os.environ, env, clear=True):
            worker = Settings()
        assert worker.engine_urls == [url] and worker.run_trainer is False
        assert worker.admin_key and worker.admin_key.get_secret_value() == "adm-test"
        assert worker.data_dir == settings.data_dir and worker.port == settings.port

        async with httpx.AsyncClient() as client:

            async def answers() -> bool:
                try:
                    r = await client.get(f"{url}/v1/models", headers=bearer(key), timeout=2)
                except httpx.HTTPError:
                    return False
                return r.status_code == 200

            await _wait(answers)
            # A worker's pool, checking the engine the way worker_app sets it up.
            engine = Engine(
                url=url, headers=bearer(key), owner_check=HostEngineOwner(os.getpid(), host.supervisor.port)
            )
            pool = EnginePool(
                [engine],
                client,
                expect=EngineExpectation(settings.base_model_name, settings.engine_max_lora_rank),
                max_resident=4,
                health_interval_s=0.1,
            )
            await pool.wait_healthy(20)
            lease = await pool.acquire(LoraRef("v-1", lambda: str(tmp_path)))
            pool.release(lease)
            pool.start_monitor()
            try:
                # The parent's supervisor restarts the engine; the worker's health checks see it
                # go and come back, and load the worker's adapter on the new engine.
                old = host.supervisor.process.pid  # type: ignore[union-attr]
                os.killpg(old, signal.SIGKILL)

                async def reloaded() -> bool:
                    proc = host.supervisor.process  # type: ignore[union-attr]
                    if proc is None or proc.pid == old or not engine.healthy:
                        return False
                    r = await client.get(f"{url}/v1/models", headers=bearer(key), timeout=2)
                    return "v-1" in {card["id"] for card in r.json()["data"]}

                await _wait(reloaded)
                assert host.supervisor.restarts == 1
            finally:
                await pool.stop_monitor()
    finally:
        await host.stop()
    assert host.supervisor.process.returncode is not None  # type: ignore[union-attr]
    assert host._retention is not None and host._retention.done()


def test_a_worker_builds_the_gateway_without_host_processes(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = HostProcesses(settings, _launch(settings))  # not started: only its environment is used
    built: dict[str, Any] = {}

    def fake_create_app(**kw: Any) -> str:
        built.update(kw)
        return "app"

    monkeypatch.setattr("gateway.app.create_app", fake_create_app)
    (tmp_path / "m").mkdir()
    with mock.patch.dict(os.environ, _worker_environ(host, str(tmp_path / "m")), clear=True):
        assert workers.worker_app() == "app"
    services = built["services"]
    assert built["retention"] is False  # the parent applies retention, once per host
    assert services.supervisors == [] and services.trainer is None
    (engine,) = services.pool.engines
    assert engine.url == host.supervisor.launch.url  # type: ignore[union-attr]
    assert engine.headers == bearer(host.supervisor.api_key)  # type: ignore[union-attr]
    assert isinstance(engine.owner_check, HostEngineOwner) and engine.owner_check.parent_pid == os.getpid()


def test_workers_with_operator_engines_use_them_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(tmp_path, engine_urls=["http://gpu1:8000"], engine_api_key="k1")
    host = HostProcesses(settings)
    assert host.supervisor is None
    env = host.worker_env(log_level="info", metrics_dir=str(tmp_path), parent_pid=1)
    assert workers.PARENT_PID_ENV not in env
    built: dict[str, Any] = {}
    monkeypatch.setattr("gateway.app.create_app", lambda **kw: built.update(kw))
    with mock.patch.dict(os.environ, env, clear=True):
        workers.worker_app()
    (engine,) = built["services"].pool.engines
    assert engine.url == "http://gpu1:8000" and engine.owner_check is None  # checked as an operator's engine


@pytest.fixture
def listening() -> Iterator[int]:
    with listening_port() as port:
        yield port


def test_host_engine_owner_takes_only_a_listener_under_the_parent(listening: int) -> None:
    assert HostEngineOwner(os.getpid(), listening)() is None
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        problem = HostEngineOwner(stranger.pid, listening)()
        assert problem is not None and "not running" in problem.reason
    finally:
        stranger.kill()
        stranger.wait()


class FakeManager:
    """uvicorn's Multiprocess, recording what it was asked to run and the environment then."""

    runs: list[dict[str, Any]] = []
    exitcode: int | None = 0

    def __init__(self, config: Any, sockets: list[socket.socket]) -> None:
        self.config = config
        for sock in sockets:
            sock.close()
        self.processes = [mock.Mock(exitcode=self.exitcode)]

    def run(self) -> None:
        FakeManager.runs.append(
            {
                "app": self.config.app,
                "factory": self.config.factory,
                "workers": self.config.workers,
                "environ": dict(os.environ),
            }
        )


def test_run_workers_starts_host_processes_then_the_workers_and_cleans_up(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []

    class FakeHost:
        def __init__(self, s: Settings) -> None:
            assert s.data_dir == settings.data_dir

        async def start(self) -> None:
            events.append("host started")

        async def stop(self) -> None:
            events.append("host stopped")

        def worker_env(self, *, log_level: str, metrics_dir: str, parent_pid: int) -> dict[str, str]:
            events.append("workers")
            return {"TAILOR_FAKE": "1", metrics.MULTIPROC_DIR_ENV: metrics_dir}

    monkeypatch.setattr(workers, "HostProcesses", FakeHost)
    monkeypatch.setattr("uvicorn.supervisors.Multiprocess", FakeManager)
    monkeypatch.setattr(workers, "migrate", lambda url: events.append("migrated"))
    settings = settings.model_copy(update={"port": 0})  # any free port for the socket uvicorn binds
    with mock.patch.dict(os.environ, {}):
        FakeManager.runs.clear()
        assert workers.run_workers(settings, 3, "info") == 0
        (run,) = FakeManager.runs
    assert events == ["migrated", "host started", "workers", "host stopped"]
    assert run["app"] == workers.APP_FACTORY and run["factory"] is True and run["workers"] == 3
    assert run["environ"]["TAILOR_FAKE"] == "1"
    shared = Path(run["environ"][metrics.MULTIPROC_DIR_ENV])
    assert not shared.exists()  # made for this serve, removed when it stops
    assert (settings.data_dir / "secret.key").exists()  # created once, before the workers race for it

    FakeManager.exitcode = 3  # uvicorn's STARTUP_FAILURE: a worker could not start
    try:
        with mock.patch.dict(os.environ, {}):
            assert workers.run_workers(settings, 2, "info") == 3
    finally:
        FakeManager.exitcode = 0


def test_dead_workers_live_gauges_are_found(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name in (f"gauge_livesum_{dead.pid}.db", f"gauge_livesum_{os.getpid()}.db", f"counter_{dead.pid}.db"):
        (tmp_path / name).write_bytes(b"")
    assert metrics._dead_writers(str(tmp_path)) == {dead.pid}
