"""Start a throwaway Tailor (`tailor serve` with a temp data dir) for benchmarks and demos.

with local_tailor(MODEL_DIR) as server:
    key = create_tenant_key(server, "bench")
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BASE_MODEL = "SmolLM2-135M-Instruct"
MODEL_DIR = ROOT / "models" / BASE_MODEL
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class LocalTailor:
    url: str
    engine_url: str
    admin_key: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def log_tail(self, n: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_tailor(model_dir: Path, *, env_extra: dict[str, str] | None = None) -> Iterator[LocalTailor]:
    """`tailor serve` with a throwaway data dir; stopped (engine included) however we leave."""
    if not (model_dir / "config.json").exists():
        raise SystemExit(f"base model not prepared at {model_dir} (run `make install`)")
    data_dir = Path(tempfile.mkdtemp(prefix="tailor-bench-"))
    port, engine_port = free_port(), free_port()
    admin_key = "adm-" + secrets.token_urlsafe(16)
    env = {
        **os.environ,
        "TAILOR_DATA_DIR": str(data_dir),
        "TAILOR_PORT": str(port),
        "TAILOR_ENGINE_PORT": str(engine_port),
        "TAILOR_ADMIN_KEY": admin_key,
        "TAILOR_BASE_MODEL_PATH": str(model_dir),
        **(env_extra or {}),
    }
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
    server = LocalTailor(
        url=f"http://127.0.0.1:{port}",
        engine_url=f"http://127.0.0.1:{engine_port}",
        admin_key=admin_key,
        data_dir=data_dir,
        log_path=log_path,
        process=proc,
    )
    try:
        wait_ready(server)
        yield server
    finally:
        stop_tailor(proc)
        shutil.rmtree(data_dir, ignore_errors=True)


def wait_ready(server: LocalTailor) -> None:
    _progress(f"starting tailor serve on {server.url} (engine {server.engine_url}) ...")
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
    """SIGTERM and wait (the gateway stops its engine); force only what is left after that."""
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
