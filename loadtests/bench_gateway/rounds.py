"""The benchmark's rounds: closed loops of chat requests, one warm-up per target, then ABBA order."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from loadtests.chat_client import RequestResult, Target, chat_body, first_error, make_client, send_one
from loadtests.launcher import progress
from loadtests.pooled import Pooled
from loadtests.prompts import PROMPTS
from loadtests.stats import abba

# Pause after each round, not timed: the gateway's interaction-log flush and the engine's
# bookkeeping for one round must not land inside the next round (of the other target).
SETTLE_S = 1.0


@dataclass(frozen=True)
class BenchConfig:
    concurrency: int = 16
    max_tokens: int = 64
    rounds: int = 6
    requests_per_round: int = 32
    stream: bool = True


QUICK = BenchConfig(concurrency=4, max_tokens=16, rounds=2, requests_per_round=8)


@dataclass
class RoundResult:
    target: str
    slot: int  # position in the interleaved schedule, 1-based
    wall_s: float
    requests: list[RequestResult]

    @property
    def tokens_per_s(self) -> float:
        return Pooled.of([self]).tokens_per_s


async def run_round(client: httpx.AsyncClient, target: Target, cfg: BenchConfig, slot: int) -> RoundResult:
    """A closed loop: `concurrency` workers, each sending its next request as one finishes."""
    numbers = iter(range(cfg.requests_per_round))  # shared; next() never awaits, so no race
    results: list[RequestResult] = []

    async def worker() -> None:
        for i in numbers:
            body = chat_body(target.model, PROMPTS[i % len(PROMPTS)], cfg.max_tokens, stream=cfg.stream)
            results.append(await send_one(client, body))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(cfg.concurrency, cfg.requests_per_round))))
    return RoundResult(target=target.name, slot=slot, wall_s=time.perf_counter() - started, requests=results)


async def run_interleaved(targets: dict[str, Target], cfg: BenchConfig) -> list[RoundResult]:
    clients = {name: make_client(t, cfg.concurrency) for name, t in targets.items()}
    try:
        for name in ("direct", "gateway"):
            warm = await run_round(clients[name], targets[name], cfg, slot=0)
            progress(f"warm-up {name}: {_round_line(warm)}")
            await asyncio.sleep(SETTLE_S)
        rounds: list[RoundResult] = []
        for slot, name in enumerate(abba(cfg.rounds, "direct", "gateway"), start=1):
            result = await run_round(clients[name], targets[name], cfg, slot=slot)
            rounds.append(result)
            progress(f"round {slot:2d} {name:7s}: {_round_line(result)}")
            await asyncio.sleep(SETTLE_S)
        return rounds
    finally:
        await asyncio.gather(*(c.aclose() for c in clients.values()))


def _round_line(r: RoundResult) -> str:
    errors = sum(not q.ok for q in r.requests)
    line = f"{r.wall_s:6.2f} s, {r.tokens_per_s:7.1f} tok/s, {errors} errors"
    first = first_error(r.requests)
    return f"{line} (first: {first})" if first else line
