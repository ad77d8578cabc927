"""Start a throwaway Tailor (`tailor serve` with a temp data dir) for benchmarks and demos.

with local_tailor(MODEL_DIR) as server:
    key = create_tenant_key(server, "bench")   # loadtests.admin_api

By default `tailor serve` starts its own child engine, which listens on a port and key of its
own that nobody else learns. With `engine="operator"` the vLLM engine is started here instead,
with a key made here, and Tailor is pointed at it (TAILOR_ENGINE_URLS, TAILOR_ENGINE_API_KEY)
the way an operator runs one: `server.engine_url` and `server.engine_headers` then reach the
very engine the gateway uses, for benchmarks that compare the two paths. The processes are
started and stopped by `loadtests.launcher`.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from loadtests import launcher
from loadtests.launcher import LocalEngine, log_tail

# "child": `tailor serve` starts (and keys) its own engine; "operator": started here, key known;
# "mock": loadtests.mock_engine started here, an engine that answers at once (gateway overhead).
EngineMode = Literal["child", "operator", "mock"]


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
        return log_tail(self.log_path, n)


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
        port = launcher.free_port()
        admin_key = "adm-" + secrets.token_urlsafe(16)
        running: LocalEngine | None = None
        if engine != "child":
            env = launcher.gateway_env(data_dir, port, admin_key, model_dir, env_extra=env_extra)
            launch = launcher.engine_launch(launcher.settings_from(env), port=0)
            running = launcher.start_engine(launch, secrets.token_urlsafe(32), mock=engine == "mock")
            # Registered before the gateway's: the engine stops after it.
            cleanup.callback(launcher.stop_engine, running.process)
            launcher.wait_engine_ready(running)
        env = launcher.gateway_env(data_dir, port, admin_key, model_dir, env_extra=env_extra, engine=running)
        url = f"http://127.0.0.1:{port}"
        log_path = data_dir / "gateway.log"
        behind = f"engine {running.url}" if running else "its own child engine"
        proc = cleanup.enter_context(launcher.running_gateway(env, url, log_path, behind=behind))
        yield LocalTailor(
            url=url, admin_key=admin_key, data_dir=data_dir, log_path=log_path, process=proc, engine=running
        )
