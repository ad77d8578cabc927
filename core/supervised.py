"""A child process kept running for as long as its owner runs: restarted with a doubling
back-off whenever it exits, stopped with SIGTERM and then SIGKILL to its whole process group.

The one supervisor of Tailor's children: the gateway's vLLM engine (adapters.supervisor) and
its trainer worker (gateway.trainer_process) say only how to start theirs and what an exit means.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from abc import ABC, abstractmethod


class SupervisedChild(ABC):
    def __init__(self, *, name: str, max_backoff_s: float, stop_timeout_s: float) -> None:
        self.name = name
        self.max_backoff_s = max_backoff_s
        self.stop_timeout_s = stop_timeout_s
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @abstractmethod
    async def _spawn(self) -> None:
        """Start a child in a session of its own (so its group is its own) and set `process`."""

    @abstractmethod
    def _exited(self, code: int) -> None:
        """What an unexpected exit means, before the restart (a log line, state to update)."""

    async def _respawn(self) -> None:
        """A restart; an error it raises would end the supervision, so it handles its own."""
        await self._spawn()

    async def start(self) -> None:
        """Start the child (an error here is the caller's, not a restart loop's) and watch it."""
        await self._spawn()
        self._task = asyncio.create_task(self._watch(), name=self.name)

    async def _watch(self) -> None:
        backoff = 1.0
        while not self._stopping:
            if self.process is not None:
                code = await self.process.wait()
                if self._stopping:
                    return
                self._exited(code)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)
            self.restarts += 1
            await self._respawn()

    async def stop(self, timeout_s: float | None = None) -> None:
        """SIGTERM, up to `timeout_s` (default `stop_timeout_s`) to exit, then SIGKILL; whatever
        the group left goes too."""
        self._stopping = True
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.process is None or self.process.returncode is not None:
            self._kill_group(signal.SIGKILL)
            return
        self._kill_group(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), self.stop_timeout_s if timeout_s is None else timeout_s)
        except asyncio.TimeoutError:
            self._kill_group(signal.SIGKILL)
            await self.process.wait()
        self._kill_group(signal.SIGKILL)

    def _kill_group(self, sig: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)
