"""Start `tailor serve` (and, where the caller runs it, its vLLM engine) as subprocesses; wait; stop.

The one launcher behind the benchmarks' throwaway Tailor (`loadtests.local_server`) and the
integration tests' session server (`tests/integration/conftest.py`):

    env = gateway_env(data_dir, port, admin_key, MODEL_DIR, env_extra={...})
    with running_gateway(env, f"http://127.0.0.1:{port}", data_dir / "gateway.log") as process:
        ...

`tailor serve` is started the way users start it (`python -m gateway.cli serve`) in a session of
its own, and is stopped with SIGTERM (it stops a child engine itself); whatever it leaves behind
is killed. An engine started here (`start_engine`) runs with the gateway's own command line and
environment for the same settings, with a key made by the caller.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from unittest import mock

import httpx

from adapters.engines import bearer
from adapters.ports import pick_free_port
from adapters.supervisor import EngineLaunch
from core.config import Settings
from loadtests.procfs import ProcFS

ROOT = Path(__file__).resolve().parents[1]
BASE_MODEL = "SmolLM2-135M-Instruct"
MODEL_DIR = ROOT / "models" / BASE_MODEL
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0
ENGINE_HOST = "127.0.0.1"


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def log_tail(path: Path, n: int) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        return log_tail(self.log_path, n)


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
        # One gateway process unless asked: figures stay comparable from machine to machine, and
        # tests that read state right after changing it do not meet another worker's cache.
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


def mock_engine_command(launch: EngineLaunch) -> list[str]:
    """loadtests.mock_engine where `launch`'s vLLM would listen, answering to its served name."""
    command = [sys.executable, "-m", "loadtests.mock_engine", "--host", launch.host, "--port", str(launch.port)]
    return [*command, "--served-name", launch.served_name]


def start_engine(launch: EngineLaunch, key: str, *, mock: bool = False) -> LocalEngine:
    """Start vLLM with the gateway's own command line and environment; `key` via VLLM_API_KEY.

    mock: loadtests.mock_engine instead, an engine that answers at once (gateway overhead)."""
    if not launch.port:
        launch = replace(launch, port=pick_free_port(launch.host))
    launch.log_file.parent.mkdir(parents=True, exist_ok=True)
    with launch.log_file.open("ab") as log:
        # Own session: it forks an engine-core process; stop_engine signals the whole group.
        proc = subprocess.Popen(
            mock_engine_command(launch) if mock else launch.command(),
            cwd=ROOT,
            env=launch.env(key),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return LocalEngine(url=launch.url, key=key, log_path=launch.log_file, process=proc)


def wait_healthy(
    what: str,
    process: subprocess.Popen[bytes],
    probe_url: str,
    log_path: Path,
    *,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = READY_TIMEOUT_S,
) -> float:
    """Poll `probe_url` until it answers 200; the seconds that took. Fails with the log's tail
    when `process` exits first or `timeout_s` passes."""
    started = time.monotonic()
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log_tail(log_path, 40)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(probe_url, headers=dict(headers or {}), timeout=2).status_code == 200:
                return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s:\n{log_tail(log_path, 40)}")
        time.sleep(1)


def wait_engine_ready(engine: LocalEngine, timeout_s: float = READY_TIMEOUT_S) -> None:
    progress(f"starting vLLM on {engine.url} ...")
    took = wait_healthy(
        "vLLM", engine.process, f"{engine.url}/health", engine.log_path, headers=engine.headers, timeout_s=timeout_s
    )
    progress(f"vLLM ready after {took:.0f} s")


def stop_engine(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the engine's process group and wait; SIGKILL whatever is left."""
    if proc.poll() is None:
        progress("stopping vLLM ...")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT_S)
    # The group outlives its leader if the engine-core process lingers.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def start_gateway(env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`python -m gateway.cli serve` with `env`, its output to `log_path`."""
    with log_path.open("wb") as log:
        # Own session: Ctrl-C in this terminal reaches only us; we stop the server in order.
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve"],
            cwd=ROOT,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def wait_gateway_ready(url: str, process: subprocess.Popen[bytes], log_path: Path, behind: str) -> None:
    """Until `GET {url}/ready` answers 200; `behind` says which engine it serves with."""
    progress(f"starting tailor serve on {url} ({behind}) ...")
    took = wait_healthy("tailor serve", process, f"{url}/ready", log_path)
    progress(f"ready after {took:.0f} s")


def descendants(pid: int) -> list[int]:
    """Process ids below `pid` (Linux /proc): what a dead gateway (or trainer) may leave behind."""
    children: dict[int, list[int]] = {}
    for child, parent in ProcFS().parents().items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop_gateway(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM and wait (the gateway stops a child engine); force only what is left after that."""
    if proc.poll() is not None:
        return
    progress("stopping tailor serve ...")
    # The engine runs in its own session, so a kill of the gateway's group would miss it.
    below = descendants(proc.pid)
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


@contextlib.contextmanager
def running_gateway(
    env: Mapping[str, str], url: str, log_path: Path, *, behind: str = "its own child engine"
) -> Iterator[subprocess.Popen[bytes]]:
    """`tailor serve` with `env`, ready at `url`; stopped however we leave (also when it never gets ready)."""
    proc = start_gateway(env, log_path)
    try:
        wait_gateway_ready(url, proc, log_path, behind)
        yield proc
    finally:
        stop_gateway(proc)
