"""How many batch requests one gateway sends at once: fewer while interactive ones run.

`TAILOR_BATCH_CONCURRENCY` lines may be in flight while this gateway's engines serve no
interactive request, `TAILOR_BATCH_CONCURRENCY_BUSY` (1) while they serve any. A line that
finds the limit reached waits; lines already in flight finish (they are not interrupted).

Why the gateway yields besides the engine's priority scheduling: vLLM's `priority` orders only
the requests *waiting* for a place in its running batch (and picks whom to preempt when its KV
cache runs out). Once a batch request runs, it keeps its place, and every running request
shares each decoding step, so each batch request that runs makes interactive tokens slower;
and batch requests that filled every running place (`--max-num-seqs`) would make interactive
ones wait for them to finish. So batch requests get the engine's spare capacity only: at most
`TAILOR_BATCH_CONCURRENCY_BUSY` beside interactive load (at least one, so a steady
interactive load cannot starve a batch until its window closes), the full concurrency when
there is none.

Counted on this gateway's engine pool (adapters.engines), where every request holds a lease
while an engine works on it: interactive requests through other gateway replicas are not seen
here (the engines' priority scheduling still puts them first).
"""

from __future__ import annotations

import asyncio

from adapters.engines import EnginePool


class BatchSlots:
    def __init__(self, pool: EnginePool, *, idle: int, busy: int) -> None:
        self.pool = pool
        self.idle = idle
        self.busy = max(1, min(busy, idle))
        self.inflight = 0
        # Set whenever room may have opened: a batch line ended, or any request gave its engine back.
        self._changed = asyncio.Event()
        pool.on_release(self._changed.set)

    def limit(self) -> int:
        return self.busy if self.pool.foreground_inflight() > 0 else self.idle

    async def acquire(self) -> None:
        while self.inflight >= self.limit():
            self._changed.clear()
            await self._changed.wait()
        self.inflight += 1

    def release(self) -> None:
        self.inflight -= 1
        self._changed.set()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *_exc: object) -> None:
        self.release()
