"""One process's grader resources, from Settings: the Python sandbox (when the operator enabled
Python graders), how many Python grades run at once and how long a grade may take. The gateway
holds one; so can a trainer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import TracebackType

from core.config import Settings
from trainer.graders.sandbox import Sandbox, SandboxLimits
from trainer.graders.spec import Capabilities


@dataclass
class GraderRuntime:
    sandbox: Sandbox | None
    python_slots: asyncio.Semaphore
    per_tenant: int = 1  # of the python slots, what one tenant may hold at once
    timeout_s: float | None = None  # one grade's deadline
    _tenants: dict[str, _TenantShare] = field(default_factory=dict)

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
        concurrency = settings.python_grader_concurrency
        return cls(
            sandbox,
            asyncio.Semaphore(concurrency),
            per_tenant=max(1, concurrency // 2),
            timeout_s=settings.grader_timeout_s,
        )

    async def capabilities(self) -> Capabilities:
        """What graders can run here; probes the sandbox once (it fails closed)."""
        refusal = await self.sandbox.available() if self.sandbox is not None else None
        return Capabilities(python=self.sandbox is not None, python_refusal=refusal, embeddings=False)

    def python_slots_for(self, tenant_id: str) -> TenantSlot:
        """A Python grade's slot for `tenant_id`: one of the process's, of which the tenant holds
        at most `per_tenant`, so one tenant's many graders cannot keep every other one waiting."""
        return TenantSlot(self, tenant_id)

    def _share(self, tenant_id: str) -> _TenantShare:
        share = self._tenants.get(tenant_id)
        if share is None:
            share = self._tenants[tenant_id] = _TenantShare(asyncio.Semaphore(self.per_tenant))
        return share


@dataclass
class _TenantShare:
    slots: asyncio.Semaphore
    users: int = 0  # grades holding or waiting for it: the share is dropped at 0


@dataclass
class TenantSlot:
    """`async with` holds one of the tenant's share, then one of the process's slots."""

    runtime: GraderRuntime
    tenant_id: str

    async def __aenter__(self) -> None:
        share = self.runtime._share(self.tenant_id)
        share.users += 1
        try:
            await share.slots.acquire()
            try:
                await self.runtime.python_slots.acquire()
            except BaseException:
                share.slots.release()
                raise
        except BaseException:
            self._leave(share)
            raise

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        share = self.runtime._tenants[self.tenant_id]
        self.runtime.python_slots.release()
        share.slots.release()
        self._leave(share)

    def _leave(self, share: _TenantShare) -> None:
        share.users -= 1
        if share.users == 0:
            del self.runtime._tenants[self.tenant_id]
