"""Start a throwaway Tailor (`tailor serve` with a temp data dir) for benchmarks and demos.

with local_tailor(MODEL_DIR) as server:
    key = create_tenant_key(server, "bench")

By default `tailor serve` starts its own child engine, which listens on a port and key of its
own that nobody else learns. With `engine="operator"` the vLLM engine is started here instead,
with a key made here, and Tailor is pointed at it (TAILOR_ENGINE_URLS, TAILOR_ENGINE_API_KEY)
the way an operator runs one: `server.engine_url` and `server.engine_headers` then reach the
very engine the gateway uses, for benchmarks that compare the two paths.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal
from unittest import mock

import httpx

from adapters.engines import bearer
from adapters.ports import pick_free_port
from adapters.supervisor import EngineLaunch
from core.config import Settings

ROOT = Path(__file__).resolve().parents[1]
BASE_MODEL = "SmolLM2-135M-Instruct"
MODEL_DIR = ROOT / "models" / BASE_MODEL
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0
ENGINE_HOST = "127.0.0.1"

# "child": `tailor serve` starts (and keys) its own engine; "operator": started here, key known;
# "mock": loadtests.mock_engine started here, an engine that answers at once (gateway overhead).
EngineMode = Literal["child", "operator", "mock"]


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _tail(path: Path, n: int) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    return ""


@dataclass
class LocalEngine:
    """A vLLM engine started here, requiring `key` (VLLM_API_KEY) on its /v1 routes."""

    url: str
    key: str = field(repr=False)
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.key)

    def log_tail(self, n: int = 40) -> str:
        return _tail(self.log_path, n)


@dataclass
class LocalTailor:
    url: str
    admin_key: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    # The engine behind the gateway, where started here (engine="operator"); None for a child
    # engine, whose key only the gateway knows.
    engine: LocalEngine | None = None

    @property
    def engine_url(self) -> str | None:
        return self.engine.url if self.engine else None

    @property
    def engine_key(self) -> str | None:
        return self.engine.key if self.engine else None

    @property
    def engine_headers(self) -> dict[str, str]:
        return self.engine.headers if self.engine else {}

    def log_tail(self, n: int = 40) -> str:
        return _tail(self.log_path, n)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway_env(
    data_dir: Path,
    port: int,
    admin_key: str,
    model_dir: Path,
    *,
    env_extra: Mapping[str, str] | None = None,
    engine: LocalEngine | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of `tailor serve`: a child engine on a free port, or `engine` as its only one."""
    env = {
        **(os.environ if base is None else base),
        "TAILOR_DATA_DIR": str(data_dir),
        "TAILOR_PORT": str(port),
        # Any free port: never the engine of a Tailor already running here.
        "TAILOR_ENGINE_PORT": "0",
        "TAILOR_ADMIN_KEY": admin_key,
        "TAILOR_BASE_MODEL_PATH": str(model_dir),
        # One gateway process unless asked (figures stay comparable from machine to machine).
        "TAILOR_WORKERS": "1",
        **(env_extra or {}),
    }
    if engine is not None:
        env.pop("TAILOR_ENGINE_PORT", None)
        env["TAILOR_ENGINE_URLS"] = engine.url
        env["TAILOR_ENGINE_API_KEY"] = engine.key
    return env


def settings_from(env: Mapping[str, str]) -> Settings:
    """Settings as `tailor serve` reads them from `env` (and the config file it would read)."""
    with mock.patch.dict(os.environ, env, clear=True):
        return Settings()


def engine_launch(settings: Settings, port: int) -> EngineLaunch:
    """The engine `tailor serve` would start as its child for these settings, on `port`."""
    return EngineLaunch.from_settings(settings, port=port, host=ENGINE_HOST)


def start_engine(launch: EngineLaunch, key: str) -> LocalEngine:
    """Start vLLM with the gateway's own command line and environment; `key` via VLLM_API_KEY."""
    if not launch.port:
        launch = replace(launch, port=pick_free_port(launch.host))
    launch.log_file.parent.mkdir(parents=True, exist_ok=True)
    with launch.log_file.open("ab") as log:
        # Own session: it forks an engine-core process; stop_engine signals the whole group.
        proc = subprocess.Popen(
            launch.command(),
            cwd=ROOT,
            env=launch.env(key),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return LocalEngine(url=launch.url, key=key, log_path=launch.log_file, process=proc)


def start_mock_engine(launch: EngineLaunch, key: str) -> LocalEngine:
    """loadtests.mock_engine where `launch`'s vLLM would listen, answering to its served name and `key`."""
    port = launch.port or pick_free_port(launch.host)
    launch.log_file.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "loadtests.mock_engine", "--host", launch.host, "--port", str(port)]
    with launch.log_file.open("ab") as log:
        proc = subprocess.Popen(
            [*command, "--served-name", launch.served_name],
            cwd=ROOT,
            env={**os.environ, "VLLM_API_KEY": key},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return LocalEngine(url=f"http://{launch.host}:{port}", key=key, log_path=launch.log_file, process=proc)


def wait_engine_ready(engine: LocalEngine, timeout_s: float = READY_TIMEOUT_S) -> None:
    _progress(f"starting the engine on {engine.url} ...")
    started = time.monotonic()
    while True:
        if engine.process.poll() is not None:
            raise RuntimeError(f"vLLM exited with {engine.process.returncode}:\n{engine.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{engine.url}/health", headers=engine.headers, timeout=2).status_code == 200:
                _progress(f"engine ready after {time.monotonic() - started:.0f} s")
                return
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"vLLM not ready after {timeout_s:.0f} s:\n{engine.log_tail()}")
        time.sleep(1)


def stop_engine(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the engine's process group and wait; SIGKILL whatever is left."""
    if proc.poll() is None:
        _progress("stopping the engine ...")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT_S)
    # The group outlives its leader if the engine-core process lingers.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextlib.contextmanager
def local_tailor(
    model_dir: Path, *, env_extra: dict[str, str] | None = None, engine: EngineMode = "child"
) -> Iterator[LocalTailor]:
    """`tailor serve` with a throwaway data dir; stopped (engine included, after it) however we leave.

    engine="child": Tailor starts and supervises its engine. engine="operator": vLLM is started
    here first, with a random key, and Tailor uses it as an operator-run engine; the returned
    server's `engine_url` / `engine_headers` call it directly.
    """
    if not (model_dir / "config.json").exists():
        raise SystemExit(f"base model not prepared at {model_dir} (run `make install`)")
    if engine not in ("child", "operator", "mock"):
        raise ValueError(f"engine must be 'child', 'operator' or 'mock', not {engine!r}")
    with contextlib.ExitStack() as cleanup:
        data_dir = Path(tempfile.mkdtemp(prefix="tailor-bench-"))
        cleanup.callback(shutil.rmtree, data_dir, ignore_errors=True)
        port = free_port()
        admin_key = "adm-" + secrets.token_urlsafe(16)
        running: LocalEngine | None = None
        if engine != "child":
            settings = settings_from(gateway_env(data_dir, port, admin_key, model_dir, env_extra=env_extra))
            launch, key = engine_launch(settings, port=0), secrets.token_urlsafe(32)
            running = start_mock_engine(launch, key) if engine == "mock" else start_engine(launch, key)
            # Registered before the gateway's: the engine stops after it.
            cleanup.callback(stop_engine, running.process)
            wait_engine_ready(running)
        env = gateway_env(data_dir, port, admin_key, model_dir, env_extra=env_extra, engine=running)
        log_path = data_dir / "gateway.log"
        with log_path.open("wb") as log:
            # Own session: Ctrl-C in this terminal reaches only us; we stop the server in order.
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        cleanup.callback(stop_tailor, proc)
        server = LocalTailor(
            url=f"http://127.0.0.1:{port}",
            admin_key=admin_key,
            data_dir=data_dir,
            log_path=log_path,
            process=proc,
            engine=running,
        )
        wait_ready(server)
        yield server


def wait_ready(server: LocalTailor) -> None:
    behind = f"engine {server.engine_url}" if server.engine else "its own child engine"
    _progress(f"starting tailor serve on {server.url} ({behind}) ...")
    started = time.monotonic()
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"tailor serve exited with {server.process.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/ready", timeout=2).status_code == 200:
                _progress(f"ready after {time.monotonic() - started:.0f} s")
                return
        if time.monotonic() - started > READY_TIMEOUT_S:
            raise RuntimeError(f"tailor serve not ready after {READY_TIMEOUT_S:.0f} s:\n{server.log_tail()}")
        time.sleep(1)


def _descendants(pid: int) -> list[int]:
    """Process ids below `pid` (Linux /proc), to reap an engine a dead gateway left behind."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command name may contain spaces and parentheses; fields follow the last ')'.
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop_tailor(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM and wait (the gateway stops a child engine); force only what is left after that."""
    if proc.poll() is not None:
        return
    _progress("stopping tailor serve ...")
    # The engine runs in its own session, so a kill of the gateway's group would miss it.
    below = _descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pid in below:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)  # only if still alive: a clean stop leaves none


def create_tenant_key(server: LocalTailor, tenant: str = "bench") -> str:
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as admin:
        r = admin.post("/admin/tenants", json={"name": tenant})
        if r.status_code != 201:
            raise RuntimeError(f"creating tenant failed: {r.status_code} {r.text}")
        r = admin.post(f"/admin/tenants/{tenant}/keys", json={"name": "bench"})
        if r.status_code != 201:
            raise RuntimeError(f"creating key failed: {r.status_code} {r.text}")
        return str(r.json()["key"])
