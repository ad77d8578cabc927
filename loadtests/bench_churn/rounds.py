"""The churn benchmark's rounds: one adapter or many, with the gateway's loads and evictions counted."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from loadtests.chat_client import RequestResult, Target, chat_body, first_error, make_client, send_one
from loadtests.launcher import progress
from loadtests.metric_sums import metric_sums
from loadtests.pooled import Pooled
from loadtests.prompts import PROMPTS
from loadtests.stats import abba

WORKLOADS = ("one", "churn")
LABELS = {"one": "one adapter", "churn": "churn"}
SETTLE_S = 1.0  # untimed pause after each round (interaction-log flush, engine bookkeeping)


@dataclass(frozen=True)
class ChurnConfig:
    adapters: int = 12
    max_resident: int = 4
    max_loras: int = 4
    concurrency: int = 8
    requests: int = 48  # per workload, split over the rounds
    max_tokens: int = 32
    rounds: int = 2  # per workload
    seed: int = 1

    @property
    def per_round(self) -> int:
        return max(1, self.requests // self.rounds)

    @property
    def max_cpu_loras(self) -> int:
        return max(self.max_resident, self.max_loras)


@dataclass
class Counters:
    loads: int = 0
    evictions: int = 0
    load_s_sum: float = 0.0
    load_count: float = 0.0

    def __sub__(self, other: Counters) -> Counters:
        return Counters(
            self.loads - other.loads,
            self.evictions - other.evictions,
            self.load_s_sum - other.load_s_sum,
            self.load_count - other.load_count,
        )

    def __add__(self, other: Counters) -> Counters:
        return Counters(
            self.loads + other.loads,
            self.evictions + other.evictions,
            self.load_s_sum + other.load_s_sum,
            self.load_count + other.load_count,
        )


@dataclass
class Round:
    workload: str
    slot: int
    wall_s: float
    requests: list[RequestResult]
    counters: Counters
    distinct_in_flight: list[int]  # distinct adapters in flight, sampled as each request starts

    @property
    def tokens_per_s(self) -> float:
        return Pooled.of([self]).tokens_per_s


@dataclass
class Run:
    cfg: ChurnConfig
    cpus: int
    adapter_mb: float
    vllm_before: int
    load_avg: tuple[float, float, float]
    rounds: list[Round] = field(default_factory=list)
    setup_counters: Counters = field(default_factory=Counters)
    max_resident_seen: int = 0  # the gateway's resident count after each round, highest


# --- gateway state -----------------------------------------------------------------------------

LOAD_DURATION = "tailor_adapter_load_duration_seconds"


async def read_counters(admin: httpx.AsyncClient) -> Counters:
    engines = (await admin.get("/admin/engines")).json()
    c = Counters(loads=sum(int(e["loads"]) for e in engines), evictions=sum(int(e["evictions"]) for e in engines))
    with contextlib.suppress(httpx.HTTPError):
        sums = metric_sums((await admin.get("/metrics")).text)
        c.load_s_sum = sums.get(f"{LOAD_DURATION}_sum", 0.0)
        c.load_count = sums.get(f"{LOAD_DURATION}_count", 0.0)
    return c


async def resident(admin: httpx.AsyncClient) -> int:
    return sum(int(e["resident_adapters"]) for e in (await admin.get("/admin/engines")).json())


# --- rounds ----------------------------------------------------------------------------------


def pick_models(workload: str, names: Sequence[str], n: int, rng: random.Random) -> list[str]:
    if workload == "one":
        return [names[0]] * n
    return [rng.choice(names) for _ in range(n)]


async def run_round(
    client: httpx.AsyncClient,
    admin: httpx.AsyncClient,
    cfg: ChurnConfig,
    workload: str,
    models: list[str],
    slot: int,
) -> Round:
    numbers = iter(range(len(models)))  # shared; next() never awaits, so no race
    results: list[RequestResult] = []
    in_flight: dict[str, int] = {}
    distinct: list[int] = []

    async def worker() -> None:
        for i in numbers:
            model = models[i]
            in_flight[model] = in_flight.get(model, 0) + 1
            distinct.append(len(in_flight))
            try:
                results.append(
                    await send_one(client, chat_body(model, PROMPTS[i % len(PROMPTS)], cfg.max_tokens, stream=True))
                )
            finally:
                in_flight[model] -= 1
                if not in_flight[model]:
                    del in_flight[model]

    before = await read_counters(admin)
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(cfg.concurrency, len(models)))))
    wall = time.perf_counter() - started
    after = await read_counters(admin)
    return Round(workload, slot, wall, results, after - before, distinct)


def _line(r: Round) -> str:
    errors = sum(not q.ok for q in r.requests)
    text = (
        f"{r.wall_s:6.2f} s, {r.tokens_per_s:6.1f} tok/s, {errors} errors, "
        f"{r.counters.loads} loads, {r.counters.evictions} evictions"
    )
    first = first_error(r.requests)
    return f"{text} (first error: {first})" if first else text


async def measure(url: str, admin_key: str, key: str, names: list[str], run: Run) -> None:
    cfg = run.cfg
    target = Target(name="gateway", base_url=url, model=names[0], api_key=key)
    client = make_client(target, cfg.concurrency)
    admin = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=60)
    rng = random.Random(cfg.seed)
    try:
        # Warm-up, not counted: every adapter once (first loads), then a round of each workload.
        start = await read_counters(admin)
        t0 = time.perf_counter()
        for name in [*names[1:], names[0]]:
            body = chat_body(name, "Hi", 1, stream=False)
            res = await send_one(client, body)
            if not res.ok:
                raise RuntimeError(f"warm-up request to {name} failed: {res.error}")
        progress(f"warm-up: touched {len(names)} adapters in {time.perf_counter() - t0:.1f} s")
        for w in WORKLOADS:
            r = await run_round(client, admin, cfg, w, pick_models(w, names, cfg.concurrency, rng), 0)
            progress(f"warm-up {LABELS[w]:11s}: {_line(r)}")
            await asyncio.sleep(SETTLE_S)
        run.setup_counters = (await read_counters(admin)) - start
        for slot, w in enumerate(abba(cfg.rounds, "one", "churn"), start=1):
            r = await run_round(client, admin, cfg, w, pick_models(w, names, cfg.per_round, rng), slot)
            run.rounds.append(r)
            now = await resident(admin)
            run.max_resident_seen = max(run.max_resident_seen, now)
            progress(f"round {slot:2d} {LABELS[w]:11s}: {_line(r)} (resident now {now})")
            await asyncio.sleep(SETTLE_S)
    finally:
        await client.aclose()
        await admin.aclose()
