"""The batch runner: an asyncio task in every gateway that claims batches and runs their lines.

Every `TAILOR_BATCH_POLL_S` it claims unfinished batches nobody holds (gateway.batches.lease),
up to `TAILOR_BATCH_MAX_ACTIVE` at once, and runs each:

- lines not recorded yet are answered (gateway.batches.requests), at a lower priority than
  interactive requests on the engines (`TAILOR_BATCH_PRIORITY`), at most
  `TAILOR_BATCH_CONCURRENCY` in flight in this gateway, all its batches together, and only
  `TAILOR_BATCH_CONCURRENCY_BUSY` while interactive requests run (gateway.batches.slots);
  each answer is recorded as it comes, with its tokens, so a batch taken over after a crash
  goes on from there;
- a line refused with 429 (a rate limit or quota) or 503 (no engine could take it) is tried
  again after its `Retry-After` (or a doubling wait), at most `TAILOR_BATCH_RETRY_MAX_WAIT_S`;
- a cancel (seen when a line is recorded or the lease renewed) stops new lines; those in
  flight finish, then the batch is `cancelled` with the output of what ran;
- at the end of the completion window new lines stop likewise; the batch is `expired`, and
  the requests that did not run are in its error file as `batch_expired`;
- otherwise, once every line ran, `finalizing`, the files, `completed`.

When the gateway stops, requests in flight are cancelled (logged as 499, like a client that
went away) and its batches are released, for any gateway to go on with at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable
from datetime import datetime
from typing import Concatenate, ParamSpec, TypeVar

from core.db import Database
from core.errors import TailorError
from core.ids import utcnow
from gateway.batches import input_file, lease, output, requests, tokens
from gateway.batches.input_file import RequestLine
from gateway.batches.slots import BatchSlots
from gateway.batches.store import BatchInfo
from gateway.proxy import BatchContext
from gateway.redaction import redact_value
from gateway.services import Services
from gateway.tenants import Caller

log = logging.getLogger("tailor.batches")

_FIRST_RETRY_S = 1.0
P = ParamSpec("P")
T = TypeVar("T")


class BatchRunner:
    """Claims batches and runs them in this gateway's event loop (see the module docstring)."""

    def __init__(self, services: Services, *, worker_id: str | None = None) -> None:
        self.services = services
        self.settings = services.settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.slots = BatchSlots(
            services.pool, idle=self.settings.batch_concurrency, busy=self.settings.batch_concurrency_busy
        )
        self.running: dict[str, asyncio.Task[BatchInfo | None]] = {}
        self._poller: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._poller = asyncio.get_running_loop().create_task(self._poll_forever(), name="batch-runner")

    async def stop(self) -> None:
        tasks = [t for t in (self._poller, *self.running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._poller = None

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:  # noqa: BLE001 - a database hiccup must not end the runner
                log.warning("could not look for batches to run; trying again", exc_info=True)
            await asyncio.sleep(self.settings.batch_poll_s)

    async def poll(self) -> list[str]:
        """Claim batches while there is room, and start running each; returns their ids."""
        started: list[str] = []
        while len(self.running) < self.settings.batch_max_active:
            batch = await asyncio.to_thread(
                lease.claim, self.services.db, self.worker_id, lease_s=self.settings.batch_lease_s
            )
            if batch is None:
                break
            task = asyncio.get_running_loop().create_task(self.run(batch), name=f"batch {batch.id}")
            self.running[batch.id] = task
            task.add_done_callback(lambda _t, batch_id=batch.id: self.running.pop(batch_id, None))
            started.append(batch.id)
        return started

    async def run(self, batch: BatchInfo) -> BatchInfo | None:
        """Run a batch this gateway claimed to its end; the ended batch, or None when it was
        lost to another gateway or could not go on (released, to be tried again)."""
        return await _BatchRun(self, batch).run()


class _BatchRun:
    """One claimed batch while this gateway runs it."""

    def __init__(self, runner: BatchRunner, batch: BatchInfo) -> None:
        self.runner = runner
        self.services = runner.services
        self.settings = runner.settings
        self.batch = batch
        self.context = BatchContext(batch.id, self.settings.batch_priority)
        self.stop = asyncio.Event()  # no new lines: cancelled, expired or lost
        self.lost = False
        self.ran: set[int] = set()
        self.caller: Caller | None = None
        self.redacting = False

    async def _db(self, fn: Callable[Concatenate[Database, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(db, ...)` of gateway.batches.lease, in a thread."""
        return await asyncio.to_thread(fn, self.services.db, *args, **kwargs)

    async def run(self) -> BatchInfo | None:
        batch, worker = self.batch, self.runner.worker_id
        beating = asyncio.get_running_loop().create_task(self._keep_lease())
        try:
            try:
                lines = await asyncio.to_thread(
                    input_file.read,
                    self.services.db,
                    self.services.blobs,
                    batch.tenant_id,
                    batch.input_file_id,
                    max_lines=self.settings.batch_max_lines,
                )
            except TailorError as exc:
                error = {"code": exc.code or "invalid_input_file", "message": exc.message, "param": "input_file_id"}
                return await self._db(lease.finish, batch.id, worker, "failed", errors=[error])
            await self._refresh()
            done = await self._db(lease.done_lines, batch.id)
            left = [line for line in lines if line.index not in done]
            if batch.status == "in_progress":
                left = await self._dispatch(left)
            status = await self._db(lease.ending, batch.id, worker, all_ran=not left)
            results = await self._db(lease.results, batch.id)
            expired = left if status == "expired" else []
            out, err = await asyncio.to_thread(
                output.write_files, self.services.db, self.services.blobs, batch, results, expired
            )
            ended = await self._db(lease.finish, batch.id, worker, status, output_file_id=out, error_file_id=err)
            log.info("batch %s %s: %d completed, %d failed", batch.id, status, ended.completed, ended.failed)
            return ended
        except lease.BatchLost:
            log.warning("batch %s was taken over by another gateway; stopped here", batch.id)
            return None
        except asyncio.CancelledError:
            self._release()  # the gateway is stopping: another one goes on at once
            raise
        except Exception:
            log.exception("batch %s could not go on here; released for another try", batch.id)
            self._release()
            return None
        finally:
            beating.cancel()

    def _release(self) -> None:
        # Blocking, briefly: it must happen even while this task is being cancelled.
        with contextlib.suppress(Exception):
            lease.release(self.services.db, self.batch.id, self.runner.worker_id)

    def _expired(self, now: datetime | None = None) -> bool:
        return (now or utcnow()) >= self.batch.expires_at

    async def _dispatch(self, lines: list[RequestLine]) -> list[RequestLine]:
        """Run `lines` until all ran or the batch must stop; returns the lines that did not run."""
        own = asyncio.Semaphore(self.settings.batch_concurrency)
        tasks: list[asyncio.Task[None]] = []
        for line in lines:
            await own.acquire()
            if self.stop.is_set() or self._expired():
                own.release()
                break
            tasks.append(asyncio.get_running_loop().create_task(self._line(line, own)))
        failures = [r for r in await asyncio.gather(*tasks, return_exceptions=True) if isinstance(r, BaseException)]
        if self.lost:
            raise lease.BatchLost(self.batch.id)
        if failures:
            raise failures[0]
        return [line for line in lines if line.index not in self.ran]

    async def _line(self, line: RequestLine, own: asyncio.Semaphore) -> None:
        try:
            wait = _FIRST_RETRY_S
            while True:
                async with self.runner.slots:
                    got = await self._answer(line)
                if not got.retry:
                    break
                pause = min(got.retry_after_s or wait, self.settings.batch_retry_max_wait_s)
                wait = min(wait * 2, self.settings.batch_retry_max_wait_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), timeout=pause)
                if self.stop.is_set() or self._expired():
                    return  # not run: the batch is stopping
            # Unlike a live answer, a batch's answers are stored: as the interaction log, redacted
            # for tenants that redact personal data.
            body = redact_value(got.body) if self.redacting else got.body
            out = output.answered(line.custom_id, got.status, got.request_id, body)
            status = await self._db(
                lease.record,
                self.batch.id,
                self.runner.worker_id,
                line=line.index,
                failed=got.status != 200,
                output=out,
                lease_s=self.settings.batch_lease_s,
                tokens=tokens.of_answer(got.body),
            )
            self.ran.add(line.index)
            if status == "cancelling":
                self.stop.set()
        except lease.BatchLost:
            self.lost = True
            self.stop.set()
        except BaseException:
            self.stop.set()  # the batch cannot go on here (the database, most likely): no new lines
            raise
        finally:
            own.release()

    async def _answer(self, line: RequestLine) -> requests.Answer:
        assert self.caller is not None
        try:
            return await requests.answer(self.services, self.caller, line, self.context)
        except Exception:
            log.exception("batch %s: line %d failed inside the gateway", self.batch.id, line.lineno)
            err = TailorError(500, "The server had an error while processing this request.", code="internal_error")
            return requests.Answer(err.status, err.body(), None)

    async def _refresh(self) -> None:
        """Who the lines run as and whether their answers are kept redacted, as the tenant's
        settings are now (its limits may change while a batch runs)."""
        self.caller = await self._db(lease.caller_for, self.batch)
        self.redacting = self.settings.redact_pii or await self._db(lease.redacts, self.batch.tenant_id)

    async def _keep_lease(self) -> None:
        """Renew the lease every third of it; notice cancels, the window's end, a lost lease."""
        while True:
            await asyncio.sleep(self.settings.batch_lease_s / 3)
            try:
                status = await self._db(
                    lease.renew, self.batch.id, self.runner.worker_id, lease_s=self.settings.batch_lease_s
                )
                await self._refresh()
            except lease.BatchLost:
                self.lost = True
                self.stop.set()
                return
            except Exception:  # noqa: BLE001 - the next renewal may work; the lease outlasts two misses
                log.warning("batch %s: lease not renewed; trying again", self.batch.id, exc_info=True)
                continue
            if status == "cancelling" or self._expired():
                self.stop.set()
