"""The trainer worker that `tailor serve` runs beside the gateway, as its own process.

Training is CPU/GPU-heavy and must never block the gateway's event loop, so it runs in a
child process (`tailor trainer`) that claims jobs from the database like any other
worker. If it dies it is restarted; a job it was running is re-queued by the next
worker once its heartbeat goes stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

log = logging.getLogger("tailor.trainer")


class TrainerProcess:
    def __init__(self, log_file: Path, *, stop_timeout_s: float = 15.0) -> None:
        self.log_file = log_file
        self.stop_timeout_s = stop_timeout_s
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        await self._spawn()
        self._task = asyncio.create_task(self._watch(), name="trainer-process")

    async def _spawn(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway.cli",
                "trainer",
                stdout=out,
                stderr=out,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
                env=dict(os.environ),
            )
        log.info("trainer worker started (pid %s, log %s)", self.process.pid, self.log_file)

    async def _watch(self) -> None:
        backoff = 1.0
        while not self._stopping:
            assert self.process is not None
            code = await self.process.wait()
            if self._stopping:
                return
            log.error("trainer worker exited with %s; restarting in %.0f s", code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 60.0)
            self.restarts += 1
            await self._spawn()

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        proc = self.process
        if proc is None or proc.returncode is not None:
            return
        # SIGTERM lets the worker stop between jobs; a job still running after the
        # timeout is killed and re-queued later from its stale heartbeat.
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.stop_timeout_s)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
