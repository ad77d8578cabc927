"""A rounds (interactive clients alone) and B rounds (the same clients beside a running batch), ABAB."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass

import httpx

from loadtests.bench_batch_priority.batches import ENDED, batch_state, start_batch, stop_batch, wait_for
from loadtests.bench_batch_priority.workload import CHAT_PATH, BenchConfig, chat_body
from loadtests.launcher import progress
from loadtests.prompts import PROMPTS
from loadtests.stats import percentile

SETTLE_S = 1.0  # after each round, untimed: the log flush and the engine's bookkeeping settle


@dataclass
class RoundResult:
    kind: str  # "A": interactive alone; "B": beside a batch
    slot: int  # 1-based position in the schedule
    latencies_s: list[float]
    errors: int
    wall_s: float
    batch_alone_lines: int = 0  # lines the batch answered in `alone_s`, before the clients started
    batch_alone_s: float = 0.0
    batch_lines: int = 0  # lines the batch answered while the clients ran


def schedule(rounds: int) -> list[str]:
    return ["A", "B"] * rounds


async def interactive_client(
    client: httpx.AsyncClient, model: str, cfg: BenchConfig, index: int, latencies: list[float]
) -> int:
    """One closed-loop client: `requests` chat completions back to back; returns its errors."""
    errors = 0
    for i in range(cfg.requests):
        body = chat_body(model, PROMPTS[(index + i) % len(PROMPTS)], cfg)
        started = time.perf_counter()
        try:
            resp = await client.post(CHAT_PATH, json=body)
            ok = resp.status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            latencies.append(time.perf_counter() - started)
        else:
            errors += 1
    return errors


async def interactive_round(client: httpx.AsyncClient, model: str, cfg: BenchConfig) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    started = time.perf_counter()
    errors = await asyncio.gather(*(interactive_client(client, model, cfg, c, latencies) for c in range(cfg.clients)))
    return latencies, sum(errors), time.perf_counter() - started


async def warm_up(client: httpx.AsyncClient, model: str, cfg: BenchConfig) -> None:
    await interactive_round(client, model, BenchConfig(**{**asdict(cfg), "requests": 1}))


async def run_round(client: httpx.AsyncClient, model: str, cfg: BenchConfig, kind: str, slot: int) -> RoundResult:
    if kind == "A":
        latencies, errors, wall = await interactive_round(client, model, cfg)
        return RoundResult(kind, slot, latencies, errors, wall)
    batch_id = await start_batch(client, model, cfg)
    try:
        # Running at full speed once a line is answered; then it runs alone for a while.
        _, first = await wait_for(client, batch_id, lambda _s, n: n >= 1, timeout_s=600)
        alone_started = time.perf_counter()
        await asyncio.sleep(cfg.alone_s)
        _, before = await batch_state(client, batch_id)
        alone_s = time.perf_counter() - alone_started
        latencies, errors, wall = await interactive_round(client, model, cfg)
        status, after = await batch_state(client, batch_id)
        if status in ENDED:
            raise RuntimeError(f"the batch ended ({status}) before the round did: raise --batch-lines")
    finally:
        await stop_batch(client, batch_id, timeout_s=600)
    return RoundResult(kind, slot, latencies, errors, wall, before - first, alone_s, after - before)


async def run_rounds(client: httpx.AsyncClient, model: str, cfg: BenchConfig) -> list[RoundResult]:
    await warm_up(client, model, cfg)
    results = []
    for slot, kind in enumerate(schedule(cfg.rounds), start=1):
        result = await run_round(client, model, cfg, kind, slot)
        progress(round_line(result))
        results.append(result)
        await asyncio.sleep(SETTLE_S)
    return results


def round_line(r: RoundResult) -> str:
    p95 = percentile(r.latencies_s, 95)
    line = f"round {r.slot} ({r.kind}): {len(r.latencies_s)} ok, {r.errors} failed, p95 {_ms(p95)} ms"
    if r.kind == "B":
        line += f"; batch lines alone {r.batch_alone_lines} in {r.batch_alone_s:.1f} s, beside {r.batch_lines}"
    return line


# --- report -----------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f}"
