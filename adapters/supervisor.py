"""Runs vLLM's OpenAI server as a child process and restarts it when it dies.

The child is Tailor's alone: it listens on a port picked free right before it starts
(or a configured one, checked free first) and requires a random key, made once per
gateway process and handed over in the environment (VLLM_API_KEY), not on the command
line where `ps` shows it. The pool sends that key on every call and, through
`ownership_problem`, only uses the engine while the process listening on its port is the
one started here (see `adapters.engine_checks` for what that guarantees).

While the child is down the pool marks its engine unavailable, so requests get a clean
503 instead of hanging; once it answers again the pool re-loads its adapters. A child
that exits says why: the end of its log goes to the server log, a short reason to /ready.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from adapters.adapter_source import CACHE_ENV, SOURCE_ENV
from adapters.engine_checks import Problem
from adapters.engine_exit import exit_report, read_tail
from adapters.engines import Engine, EnginePool, bearer
from adapters.ports import pick_free_port, port_is_free, tree_listens_on
from core.base_models import BaseModelConfig
from core.child_env import runtime_env
from core.config import Settings
from core.supervised import SupervisedChild

log = logging.getLogger("tailor.supervisor")

# JSON under a schema (response_format, the calls the gateway forces) without free whitespace,
# as OpenAI writes it: with vLLM's default, a small or narrowly fine-tuned model can pad the
# JSON with newlines until max_tokens (seen here on adapters of the test model). Choosing
# the backend is what vLLM requires for this; a later --structured-outputs-config in
# TAILOR_ENGINE_EXTRA_ARGS replaces it.
STRUCTURED_OUTPUTS = '{"backend": "xgrammar", "disable_any_whitespace": true}'


@dataclass(frozen=True)
class EngineLaunch:
    model_path: Path
    served_name: str
    port: int  # 0: any free port
    max_lora_rank: int
    max_loras: int
    max_cpu_loras: int
    max_model_len: int
    dtype: str
    kv_cache_gib: int
    log_file: Path
    extra_args: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    tool_call_parser: str | None = None
    # False for a full model's own engine (adapters.dedicated): it serves no adapters.
    lora: bool = True
    # Set last in the child's environment (a dedicated engine's thread and KV-cache sizing).
    extra_env: dict[str, str] = field(default_factory=dict)
    # TAILOR_ENGINE_ADAPTER_SOURCE=url: the gateway the child fetches adapters from, and where
    # it keeps them (adapters.vllm_resolver).
    adapter_source_url: str | None = None
    adapter_cache_dir: Path | None = None

    @classmethod
    def from_settings(cls, s: Settings, *, port: int | None = None, host: str = "127.0.0.1") -> EngineLaunch:
        """The child engine `tailor serve` starts for these settings (port: s.engine_port)."""
        return cls(
            model_path=s.base_model_path.resolve(),
            served_name=s.base_model_name,
            port=s.engine_port if port is None else port,
            max_lora_rank=s.engine_max_lora_rank,
            max_loras=s.engine_max_loras,
            max_cpu_loras=max(s.max_resident_adapters, s.engine_max_loras),
            max_model_len=s.engine_max_model_len,
            dtype=s.engine_dtype,
            kv_cache_gib=s.engine_kv_cache_gib,
            log_file=s.data_dir / "logs" / "engine.log",
            extra_args=s.engine_extra_args,
            host=host,
            tool_call_parser=s.engine_tool_call_parser,
            adapter_source_url=own_url(s) if s.engine_adapter_source == "url" else None,
            # The store's own cache (same <digest>/ layout): deleting a version removes the
            # child's copy with the gateway's.
            adapter_cache_dir=s.cache_dir.resolve() / "adapters",
        )

    def for_base(self, base: BaseModelConfig, *, port: int, log_file: Path) -> EngineLaunch:
        """This launch for `base`: the same flags on its checkpoint, under its name (this one
        unchanged for the default base, or a base without a checkpoint)."""
        if base.default or base.path is None:
            return self
        return replace(self, model_path=base.path.resolve(), served_name=base.name, port=port, log_file=log_file)

    @classmethod
    def dedicated(cls, s: Settings, *, model_path: Path, served_name: str) -> EngineLaunch:
        """The child engine of a full-model version: its own checkpoint, no LoRA, any free port,
        few threads and a small KV cache, so that it shares the machine with the base engine.

        On the CPU build, vLLM's default binds each engine's threads to the same cores
        ("auto"); unbound threads (nobind) let the OS spread several engines over them.
        """
        base = cls.from_settings(s, port=0)
        return replace(
            base,
            model_path=model_path,
            served_name=served_name,
            lora=False,
            kv_cache_gib=s.dedicated_kv_cache_gib,
            # On the CPU build the base engine compiles nothing either: serving LoRA turns it off.
            extra_args=[*s.engine_extra_args, *(["--enforce-eager"] if s.dedicated_engine_eager else [])],
            log_file=s.data_dir / "logs" / f"engine-{served_name[:12]}.log",
            extra_env={
                "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                "OMP_NUM_THREADS": str(s.dedicated_engine_threads),
                "VLLM_CPU_KVCACHE_SPACE": str(s.dedicated_kv_cache_gib),
            },
        )

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
            *self.lora_args(),
            "--max-model-len",
            str(self.max_model_len),
            "--dtype",
            self.dtype,
            "--disable-uvicorn-access-log",
            # Lower `priority` is scheduled first (0 by default): batch requests carry a higher
            # one (TAILOR_BATCH_PRIORITY), so the engine's queue serves interactive ones first.
            "--scheduling-policy",
            "priority",
            "--structured-outputs-config",
            STRUCTURED_OUTPUTS,
            *self.tool_args(),
            *self.extra_args,
        ]

    def lora_args(self) -> list[str]:
        if not self.lora:
            return []
        return [
            "--enable-lora",
            "--max-lora-rank",
            str(self.max_lora_rank),
            "--max-loras",
            str(self.max_loras),
            "--max-cpu-loras",
            str(self.max_cpu_loras),
        ]

    def tool_args(self) -> list[str]:
        # vLLM 0.32 parses tool calls out of the model's text only with both flags: without
        # --enable-auto-tool-choice the parser is not loaded at all, and "auto" and "required"
        # are refused. An unknown name stops vLLM at start, listing the names it knows.
        if self.tool_call_parser is None:
            return []
        return ["--enable-auto-tool-choice", "--tool-call-parser", self.tool_call_parser]

    def env(self, api_key: str) -> dict[str, str]:
        # vLLM reads only its runtime's variables (and VLLM_*); none of the gateway's secrets.
        env = runtime_env(os.environ)
        env["VLLM_API_KEY"] = api_key
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
        # vLLM logs INFO to stdout, which Python block-buffers into a file: without this the
        # log (adapter loads, the lines before a crash that exit reports quote) lags by up
        # to 8 KiB and is lost when the engine is killed.
        env["PYTHONUNBUFFERED"] = "1"
        if self.lora and self.adapter_source_url:
            env[SOURCE_ENV] = self.adapter_source_url
            if self.adapter_cache_dir is not None:
                env[CACHE_ENV] = str(self.adapter_cache_dir)
        env.update(self.extra_env)
        return env


def own_url(s: Settings) -> str:
    """This gateway's URL as a process on the same host reaches it."""
    host = "127.0.0.1" if s.host in ("0.0.0.0", "", "::") else s.host
    return f"http://[{host}]:{s.port}" if ":" in host else f"http://{host}:{s.port}"


class EnginePortTaken(RuntimeError):
    """The configured engine port is in use by another process."""


def child_engine(launch: EngineLaunch) -> Engine:
    """The pool's entry for a child engine; its supervisor fills in key and port."""
    return Engine(url=launch.url)


class EngineSupervisor(SupervisedChild):
    """Keeps one child engine running for as long as the gateway runs."""

    def __init__(self, launch: EngineLaunch, pool: EnginePool, engine: Engine, *, max_backoff_s: float = 30.0) -> None:
        super().__init__(name="supervise-engine", max_backoff_s=max_backoff_s, stop_timeout_s=20.0)
        self.launch = launch
        self.pool = pool
        self.engine = engine
        self.port = launch.port
        # Why the last child stopped (short form), until the next one does.
        self.failure: str | None = None
        self._api_key = secrets.token_urlsafe(32)
        self._log_offset = 0
        self._listener_pid: int | None = None  # the child seen holding the port
        engine.headers = bearer(self._api_key)
        engine.owner_check = self.ownership_problem

    @property
    def api_key(self) -> str:
        """The child's key, for the processes that share this engine (the workers of
        `tailor serve --workers`, through their environment only)."""
        return self._api_key

    def _choose_port(self) -> int:
        host = self.launch.host
        if self.launch.port:
            if not port_is_free(host, self.launch.port):
                raise EnginePortTaken(
                    f"engine port {self.launch.port} on {host} is in use by another process "
                    "(TAILOR_ENGINE_PORT): free it, or set TAILOR_ENGINE_PORT=0 to use any free port"
                )
            return self.launch.port
        # Keep the port of the last child when it is still free: its URL stays the same.
        if self.port and port_is_free(host, self.port):
            return self.port
        return pick_free_port(host)

    async def _spawn(self) -> None:
        # A configured port that is taken raises here: at start, the caller's error.
        port = self._choose_port()
        launch = replace(self.launch, port=port)
        self.port = port
        self.engine.url = launch.url
        self._listener_pid = None
        launch.log_file.parent.mkdir(parents=True, exist_ok=True)
        out = launch.log_file.open("ab")
        self._log_offset = out.tell()
        # The command carries no secret; the key travels in the environment.
        log.info("starting engine: %s", " ".join(launch.command()))
        # Own session: the server forks an engine-core process, and both must go on stop.
        self.process = await asyncio.create_subprocess_exec(
            *launch.command(),
            env=launch.env(self._api_key),
            stdout=out,
            stderr=out,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()

    async def _respawn(self) -> None:
        try:
            await self._spawn()
        except EnginePortTaken as exc:
            self.process = None
            self.failure = "could not start: its configured port is in use"
            self.engine.problem = f"child engine {self.failure}"
            log.error("%s; retrying", exc)
        # The health monitor flips the engine back and re-loads its adapters.

    def _exited(self, code: int) -> None:
        report = exit_report(code, read_tail(self.launch.log_file, self._log_offset))
        self.failure = report.reason
        self.engine.restarting = True
        self.pool.mark_down(self.engine)
        self.engine.problem = f"child engine {report.reason}; restarting"
        log.error(
            "child engine on port %s %s; restarting. Last lines of %s:\n%s",
            self.port,
            report.reason,
            self.launch.log_file,
            report.tail,
        )
        self._kill_group(signal.SIGKILL)
        if report.port_taken:
            self.port = 0  # lost the race for a free port: pick another

    def ownership_problem(self) -> Problem | None:
        """None while the child started here is alive and holds the engine's port."""
        proc = self.process
        if proc is None or proc.returncode is not None:
            return Problem(f"child engine {self.failure or 'is not running'}")
        if self._listener_pid != proc.pid:
            if not tree_listens_on(proc.pid, self.port):
                last = f" (the previous one {self.failure})" if self.failure else ""
                return Problem(f"child engine is starting{last}")
            self._listener_pid = proc.pid
        return None
