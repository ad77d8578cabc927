"""The interaction log: every OpenAI-route request, written off the hot path.

Handlers `record()` a plain dataclass into an in-memory queue (no I/O, no await); one
background task writes batches in a worker thread. Shutdown drains the queue, so a
graceful stop loses nothing. A failing database is retried with back-off; records are
dropped (and counted) only when the queue is full.

Personal data is redacted (gateway.redaction) in the writer thread, just before insert,
for tenants with `redact_pii` set or for everyone when `redact_all` is on: the flags are
read with one query per batch, never on the request path, and a changed flag applies
from the next batch on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from core.db import Database
from core.ids import utcnow
from core.models import Feedback, Interaction, Tenant
from gateway.redaction import redact_metadata, redact_optional, redact_payload

log = logging.getLogger("tailor.interactions")


@dataclass
class InteractionRecord:
    id: str
    tenant_id: str
    api_key_id: str | None
    endpoint: str
    model: str
    request: dict[str, Any]
    stream: bool = False
    adapter_version_id: str | None = None
    engine: str | None = None
    response_text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    status_code: int = 200
    error: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    stored: bool = False  # `store: true`: served back by the stored completions API
    stored_metadata: dict[str, str] | None = None
    batch_id: str | None = None  # a batch's request (metered at the batch price), not an interactive one


class InteractionLog:
    def __init__(
        self,
        db: Database,
        *,
        batch_size: int = 200,
        flush_interval_s: float = 0.5,
        max_queue: int = 100_000,
        redact_all: bool = False,
    ) -> None:
        self.db = db
        self.redact_all = redact_all
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.queue: asyncio.Queue[InteractionRecord] = asyncio.Queue(maxsize=max_queue)
        self.written = 0
        self.dropped = 0
        self.write_errors = 0
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._writing = asyncio.Lock()

    def record(self, rec: InteractionRecord) -> None:
        try:
            self.queue.put_nowait(rec)
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("interaction log queue full; dropped %s (%d dropped so far)", rec.id, self.dropped)

    def start(self) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="interaction-log")

    async def stop(self) -> None:
        """Write everything still queued, then stop."""
        if self._task is None:
            return
        self._stop.set()
        await self._task
        self._task = None

    async def flush(self) -> None:
        """Write everything recorded so far, including a batch the background task holds."""
        async with self._writing:
            while not self.queue.empty():
                await self._write_with_retry(self._take(self.batch_size))

    def _take(self, limit: int) -> list[InteractionRecord]:
        batch: list[InteractionRecord] = []
        while len(batch) < limit and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        return batch

    async def _run(self) -> None:
        while not (self._stop.is_set() and self.queue.empty()):
            if self.queue.empty():
                await self._wait_stop(self.flush_interval_s)
                continue
            # Let a batch build up: one transaction per batch instead of one per request.
            if self.queue.qsize() < self.batch_size:
                await self._wait_stop(self.flush_interval_s)
            # Taken under the lock, so flush() can wait for a batch that is in flight.
            async with self._writing:
                await self._write_with_retry(self._take(self.batch_size))

    async def _wait_stop(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _write_with_retry(self, batch: list[InteractionRecord], attempts: int = 1_000_000) -> None:
        delay = 0.2
        for attempt in range(attempts):
            try:
                await asyncio.to_thread(self._write, batch)
                self.written += len(batch)
                return
            except (IntegrityError, DataError) as exc:
                # Not transient (e.g. the tenant was deleted meanwhile): retrying the same
                # batch would fail forever and hold up every later record and stop().
                # Write the records one by one and drop only the ones refused.
                self.write_errors += 1
                if len(batch) == 1:
                    self.dropped += 1
                    log.error("dropped interaction record %s: %s", batch[0].id, exc)
                    return
                for rec in batch:
                    await self._write_with_retry([rec], attempts)
                return
            except SQLAlchemyError as exc:
                self.write_errors += 1
                log.warning("interaction log write failed (attempt %d): %s", attempt + 1, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self.dropped += len(batch)
        log.error("gave up writing %d interaction records", len(batch))

    def _write(self, batch: list[InteractionRecord]) -> None:
        if batch:
            with self.db.session() as s:
                redacting = self._redacting_tenants(s, {r.tenant_id for r in batch})
                # Shallow copies: asdict() deep-copied every request body, which took about as
                # much of the gateway's CPU as the insert itself (py-spy); the bodies are only read.
                rows = [_redacted(dict(vars(r))) if r.tenant_id in redacting else dict(vars(r)) for r in batch]
                s.execute(insert(Interaction), rows)

    def _redacting_tenants(self, s: Session, tenant_ids: set[str]) -> set[str]:
        if self.redact_all:
            return tenant_ids
        query = select(Tenant.id).where(Tenant.id.in_(sorted(tenant_ids)), Tenant.redact_pii.is_(True))
        return set(s.scalars(query))


def _redacted(row: dict[str, Any]) -> dict[str, Any]:
    # The error text too: validation messages can echo what the client sent.
    row["request"] = redact_payload(row["request"])
    row["response_text"] = redact_optional(row["response_text"])
    row["error"] = redact_optional(row["error"])
    row["stored_metadata"] = redact_metadata(row["stored_metadata"])
    return row


def erase_conversation(s: Session, row: Interaction) -> None:
    """Forget what a logged request said: its messages, answer, error text, stored metadata, and
    the feedback about it (as retention does). Its metering (model, tokens, latency) stays for
    usage reports."""
    s.execute(delete(Feedback).where(Feedback.tenant_id == row.tenant_id, Feedback.interaction_id == row.id))
    row.stored = False
    row.stored_metadata = None
    row.request = {}
    row.response_text = None
    row.error = None
