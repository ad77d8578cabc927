"""The sandbox Python graders run in: a tenant's code, so nothing of the host may reach it.

Each grade is a fresh process tree (sandbox_boot sets it up, sandbox_runner calls `grade`):

- namespaces: its own user namespace (its root is an unprivileged host uid: `nobody` when
  Tailor runs as root, else Tailor's own uid), network (only a loopback that is down: no
  connection leaves it), mount, PID (it is PID 1: when `grade` returns, everything it started
  dies), IPC and UTS;
- file system: a fresh tmpfs root holding read-only binds of the interpreter and the system
  libraries (/usr, the Python prefix) and a writable tmpfs /work of `tmpfs_mib`; nothing else
  of the host (no /etc, /proc, /dev, /tmp, no data directory, no database);
- limits: address space `memory_mib` per process, CPU seconds, `file_mib` per file (memfds
  too), `open_files` per process, `processes` tasks, no core files; in its IPC and user
  namespaces no System V shared memory or message queues, no POSIX message queues and no
  further user namespaces (memory outside any process's address space); wall clock
  `timeout_s` for the whole run, stdout and stderr together at most `max_output_bytes`,
  after which the tree is killed (SandboxLimits.memory_bound_mib: the memory one grade can hold);
- no capabilities (empty bounding set, no_new_privs), an empty environment.

It fails closed: if any step of the set-up fails, nothing of the tenant's runs and the grade
is a server error; `available()` tries the whole path once so a server that cannot isolate
refuses Python graders up front. What it does not do is in README.md ("Python graders").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BOOT = HERE / "sandbox_boot.py"
RUNNER = HERE / "sandbox_runner.py"
SETUP_FAILED = 70  # sandbox_boot's exit status when it refused to go on
READY = b"tailor-sandbox-ready\n"
MAX_ANSWER_BYTES = 64 * 1024
MAX_ERROR_CHARS = 4000
NOBODY = 65534
ROOT_TMPFS_MIB = 8  # sandbox_boot's root, read-only once set up
SYSTEM_PATHS = ("/usr", "/lib", "/lib64", "/lib32", "/bin")


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0
    memory_mib: int = 256
    max_output_bytes: int = 1 << 20
    processes: int = 16
    tmpfs_mib: int = 16
    file_mib: int = 4  # any one file, a memfd included
    open_files: int = 32

    def memory_bound_mib(self) -> int:
        """The most memory one grade can hold: each process its address space and files
        (memfds live outside the address space) and the tmpfs mounts; System V shared memory
        and message queues, POSIX message queues and nested user namespaces are closed."""
        return self.processes * (self.memory_mib + self.open_files * self.file_mib) + self.tmpfs_mib + ROOT_TMPFS_MIB


@dataclass(frozen=True)
class SandboxOutcome:
    """A grade from the sandbox: `reward`, or `error` (whose `kind` is "runtime" for anything the
    grader did, "setup" when the sandbox refused to start it)."""

    reward: float | None = None
    error: str | None = None
    kind: str | None = None


class SandboxError(Exception):
    """The sandbox could not be set up: nothing of the grader ran."""


def _interpreter() -> str:
    # The base interpreter, not a virtual environment's: the sandbox shows its prefix only.
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _binds() -> list[str]:
    """The host paths shown read-only inside: system libraries and the interpreter's prefix."""
    prefix = os.path.realpath(sys.base_prefix)
    paths: list[str] = []
    for path in (*SYSTEM_PATHS, prefix):
        if not os.path.lexists(path):
            continue
        real = path if os.path.islink(path) else os.path.realpath(path)
        if any(real == p or real.startswith(p.rstrip("/") + "/") for p in paths):
            continue  # already inside a bind
        paths.append(real)
    return paths


def _limits(limits: SandboxLimits) -> dict[str, int]:
    return {
        "RLIMIT_AS": limits.memory_mib << 20,
        "RLIMIT_CPU": math.ceil(limits.timeout_s) + 1,
        "RLIMIT_FSIZE": limits.file_mib << 20,
        "RLIMIT_NOFILE": limits.open_files,
        "RLIMIT_NPROC": limits.processes,
        "RLIMIT_CORE": 0,
        "RLIMIT_MSGQUEUE": 0,
    }


def _write_maps(pid: int) -> None:
    """Map the namespace's root to an unprivileged host identity (see the module docstring)."""
    privileged = os.geteuid() == 0
    uid, gid = (NOBODY, NOBODY) if privileged else (os.geteuid(), os.getegid())
    proc = Path(f"/proc/{pid}")
    (proc / "uid_map").write_text(f"0 {uid} 1\n")
    if not privileged:
        (proc / "setgroups").write_text("deny\n")
    (proc / "gid_map").write_text(f"0 {gid} 1\n")


class Sandbox:
    def __init__(self, limits: SandboxLimits | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self._available: str | None | bool = False  # False: not probed yet; None: works; str: why not
        self._probe_lock = asyncio.Lock()

    async def available(self) -> str | None:
        """None when the sandbox works on this host, else why not (probed once)."""
        async with self._probe_lock:
            if self._available is False:
                try:
                    outcome = await self.run("def grade(sample, item):\n    return 1.0\n", {}, {})
                    ok = outcome.reward == 1.0
                    self._available = None if ok else f"a trial grade did not come back ({outcome.error})"
                except SandboxError as exc:
                    self._available = str(exc)
            return self._available if isinstance(self._available, str) else None

    async def run(self, source: str, sample: Any, item: Any) -> SandboxOutcome:
        """Run `grade(sample, item)` from `source`. Raises SandboxError when it cannot isolate."""
        payload = json.dumps({"source": source, "sample": sample, "item": item}).encode()
        with tempfile.TemporaryDirectory(prefix="tailor-grader-") as tmp:
            # The namespace's root (an unprivileged uid) must be able to reach the mount point.
            os.chmod(tmp, 0o755)
            root = Path(tmp, "root")
            root.mkdir(mode=0o755)
            config = Path(tmp, "config.json")
            config.write_text(
                json.dumps(
                    {
                        "runner_path": str(RUNNER),
                        "binds": _binds(),
                        "limits": _limits(self.limits),
                        "tmpfs_mib": self.limits.tmpfs_mib,
                        "root_tmpfs_mib": ROOT_TMPFS_MIB,
                        "drop_groups": os.geteuid() == 0,
                    }
                )
            )
            return await self._run(str(root), str(config), payload)

    async def _run(self, root: str, config: str, payload: bytes) -> SandboxOutcome:
        try:
            proc = await asyncio.create_subprocess_exec(
                _interpreter(),
                "-I",
                "-S",
                "-B",
                str(BOOT),
                root,
                config,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={},
                start_new_session=True,
            )
        except OSError as exc:
            raise SandboxError(f"the sandbox process could not start: {exc}") from exc
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        try:
            try:
                await asyncio.wait_for(proc.stdout.readexactly(len(READY)), timeout=10)
                _write_maps(proc.pid)
            except (asyncio.IncompleteReadError, asyncio.TimeoutError, OSError) as exc:
                raise SandboxError(await self._setup_failure(proc, exc)) from None
            return await asyncio.wait_for(self._exchange(proc, payload), timeout=self.limits.timeout_s)
        except asyncio.TimeoutError:
            return SandboxOutcome(error=f"the grader ran longer than {self.limits.timeout_s:g} s", kind="runtime")
        except _OutputLimit:
            return SandboxOutcome(
                error=f"the grader wrote more than {self.limits.max_output_bytes} bytes of output", kind="runtime"
            )
        finally:
            _kill(proc)
            await _exit_status(proc)

    async def _exchange(self, proc: asyncio.subprocess.Process, payload: bytes) -> SandboxOutcome:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        budget = _Budget(self.limits.max_output_bytes)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(b"g" + payload)
            await proc.stdin.drain()
            proc.stdin.close()
        answer, errors = await asyncio.gather(
            _read(proc.stdout, budget, MAX_ANSWER_BYTES), _read(proc.stderr, budget, None)
        )
        status = await _exit_status(proc)
        if status == SETUP_FAILED and not answer:
            raise SandboxError(_last_line(errors) or "the sandbox could not be set up")
        try:
            result = json.loads(answer)
        except (ValueError, RecursionError):
            ended = f"signal {signal.Signals(-status).name}" if status < 0 else f"status {status}"
            detail = _last_line(errors)
            if "MemoryError" in errors or status == -signal.SIGKILL:
                detail = detail or f"it may have gone over {self.limits.memory_mib} MiB"
            return SandboxOutcome(error=f"the grader process ended with {ended}: {detail}".strip(), kind="runtime")
        return _outcome(result)

    @staticmethod
    async def _setup_failure(proc: asyncio.subprocess.Process, exc: BaseException) -> str:
        _kill(proc)
        assert proc.stderr is not None
        try:
            errors = (await asyncio.wait_for(proc.stderr.read(4096), timeout=5)).decode(errors="replace")
        except asyncio.TimeoutError:
            errors = ""
        return _last_line(errors) or f"the sandbox could not be set up ({type(exc).__name__})"


async def _exit_status(proc: asyncio.subprocess.Process) -> int:
    """The process's exit status, also polled with waitpid: asyncio's child watcher is state of
    the whole process, and a loop another thread ran (`tailor serve --workers`' host loop) can
    leave it blind to this loop's children, so `proc.wait()` alone could wait forever."""
    unknown_since: float | None = None
    while proc.returncode is None:
        with contextlib.suppress(asyncio.TimeoutError):
            return await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=0.05)
        try:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:
            # Reaped by the watcher, whose report is on its way; or by no one who will tell.
            unknown_since = unknown_since or time.monotonic()
            if time.monotonic() - unknown_since > 1.0:
                return 255
            continue
        if pid:
            return os.waitstatus_to_exitcode(status)
    return proc.returncode


def _outcome(answer: Any) -> SandboxOutcome:
    """The runner's answer, which the grader could have written itself (the answer pipe is a
    descriptor of its process): a finite number as `reward`, or else a runtime error."""
    if isinstance(answer, dict) and "reward" in answer:
        reward = answer["reward"]
        if isinstance(reward, int | float) and not isinstance(reward, bool) and math.isfinite(reward):
            return SandboxOutcome(reward=float(reward))
        return SandboxOutcome(error="the grader's answer holds no finite number", kind="runtime")
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        return SandboxOutcome(error=answer["error"][:MAX_ERROR_CHARS], kind="runtime")
    return SandboxOutcome(error="the grader's answer is not one the runner writes", kind="runtime")


class _OutputLimit(Exception):
    pass


class _Budget:
    """Bytes of output the grader may still write (stdout and stderr together)."""

    def __init__(self, total: int) -> None:
        self.left = total

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise _OutputLimit


async def _read(stream: asyncio.StreamReader, budget: _Budget, cap: int | None) -> str:
    parts: list[bytes] = []
    while chunk := await stream.read(65536):
        budget.take(len(chunk))
        if cap is not None and sum(map(len, parts)) + len(chunk) > cap:
            raise _OutputLimit
        parts.append(chunk)
    return b"".join(parts).decode(errors="replace")


def _kill(proc: asyncio.subprocess.Process) -> None:
    # The whole session: the boot process and PID 1 of the sandbox (which takes the rest with it).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""
