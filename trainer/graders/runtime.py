"""One process's grader resources, from Settings: the Python sandbox (when the operator enabled
Python graders) and how many Python grades run at once. The gateway holds one; so can a trainer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from core.config import Settings
from trainer.graders.sandbox import Sandbox, SandboxLimits
from trainer.graders.spec import Capabilities


@dataclass
class GraderRuntime:
    sandbox: Sandbox | None
    python_slots: asyncio.Semaphore

    @classmethod
    def from_settings(cls, settings: Settings) -> GraderRuntime:
        sandbox = None
        if settings.python_graders_enabled:
            limits = SandboxLimits(
                timeout_s=settings.python_grader_timeout_s,
                memory_mib=settings.python_grader_memory_mib,
                max_output_bytes=settings.python_grader_max_output_bytes,
            )
            sandbox = Sandbox(limits)
        return cls(sandbox, asyncio.Semaphore(settings.python_grader_concurrency))

    async def capabilities(self) -> Capabilities:
        """What graders can run here; probes the sandbox once (it fails closed)."""
        refusal = await self.sandbox.available() if self.sandbox is not None else None
        return Capabilities(python=self.sandbox is not None, python_refusal=refusal, embeddings=False)
