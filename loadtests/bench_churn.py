"""Adapter churn benchmark: traffic spread over many adapters against traffic on one.

    python -m loadtests.bench_churn                       # 12 adapters, 4 resident, 8 streams
    python -m loadtests.bench_churn --max-resident 12     # the whole working set resident
    python -m loadtests.bench_churn --adapters 12 --max-resident 4 --max-loras 4 \\
        --concurrency 8 --requests 48 --max-tokens 32 --markdown

Starts one throwaway Tailor (`loadtests.local_server`, trainer off) with
TAILOR_MAX_RESIDENT_ADAPTERS = --max-resident and TAILOR_ENGINE_MAX_LORAS = --max-loras (vLLM's
--max-cpu-loras is then max of the two), builds --adapters small random PEFT LoRA adapters
(rank 8 on q/k/v/o, with run_load's builder) and registers them for one tenant. Two workloads
send the same number of streamed chat requests (temperature 0, `ignore_eos`, exactly
--max-tokens completion tokens each) from a closed loop of --concurrency workers:

* one adapter: every request to adapter 0 (stays resident: no loads after warm-up);
* churn: each request to an adapter drawn uniformly from all N (seeded), so with N above
  --max-resident most requests find their adapter unloaded and the gateway loads it, evicting
  the least recently used one.

After an uncounted warm-up (every adapter touched once, then one round of each workload),
rounds alternate ABBA (one, churn, churn, one, ...) so drift falls on both alike. Per workload:
completion tokens/s over the summed round wall time, p50/p95 latency, p50 TTFT, and from
`GET /admin/engines` the adapter loads and evictions its rounds caused (before/after deltas),
plus the mean load time from the gateway's `tailor_adapter_load_duration_seconds` histogram
(`GET /metrics`). Prints a table with the ratios churn/one, the settings, and a note on what
keeps churn close to one adapter, derived from these numbers. Measures; always exits 0 unless
setup fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from loadtests.bench_gateway import (
    PROMPTS,
    BenchConfig,
    RequestResult,
    Target,
    _ms,
    make_client,
    percentile,
    send_one,
)
from loadtests.bench_gateway import request_body as chat_body
from loadtests.local_server import BASE_MODEL, MODEL_DIR, _progress, create_tenant_key, local_tailor
from loadtests.run_load import AdapterSpec, build_adapters

WORKLOADS = ("one", "churn")
LABELS = {"one": "one adapter", "churn": "churn"}
ADAPTER_RANK = 8
ADAPTER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
SEED_BASE = 7000
SETTLE_S = 1.0  # untimed pause after each round (interaction-log flush, engine bookkeeping)
TENANT = "churn"


# --- settings and results --------------------------------------------------------------------


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

    def bench(self) -> BenchConfig:
        return BenchConfig(
            concurrency=self.concurrency,
            max_tokens=self.max_tokens,
            rounds=self.rounds,
            requests_per_round=self.per_round,
            stream=True,
        )


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
        return sum(r.completion_tokens for r in self.requests if r.ok) / self.wall_s


@dataclass
class Summary:
    workload: str
    requests: int
    errors: int
    wall_s: float
    tokens_per_s: float
    tokens_per_request: float | None
    p50_ms: float | None
    p95_ms: float | None
    p50_ttft_ms: float | None
    p95_ttft_ms: float | None
    loads: int
    evictions: int
    mean_load_ms: float | None
    mean_distinct_in_flight: float | None
    first_error: str | None = None


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

_LOAD_SUM = re.compile(r"^tailor_adapter_load_duration_seconds_sum(?:\{[^}]*\})?\s+(\S+)", re.M)
_LOAD_COUNT = re.compile(r"^tailor_adapter_load_duration_seconds_count(?:\{[^}]*\})?\s+(\S+)", re.M)


async def read_counters(admin: httpx.AsyncClient) -> Counters:
    engines = (await admin.get("/admin/engines")).json()
    c = Counters(loads=sum(int(e["loads"]) for e in engines), evictions=sum(int(e["evictions"]) for e in engines))
    with contextlib.suppress(httpx.HTTPError):
        text = (await admin.get("/metrics")).text
        c.load_s_sum = sum(float(v) for v in _LOAD_SUM.findall(text))
        c.load_count = sum(float(v) for v in _LOAD_COUNT.findall(text))
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
    max_tokens: int | None = None,
) -> Round:
    bench = cfg.bench()
    if max_tokens is not None:
        bench = BenchConfig(cfg.concurrency, max_tokens, cfg.rounds, len(models), True)
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
                results.append(await send_one(client, chat_body(model, PROMPTS[i % len(PROMPTS)], bench)))
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


def abba(rounds: int) -> list[str]:
    order: list[str] = []
    for pair in range(rounds):
        order += ["one", "churn"] if pair % 2 == 0 else ["churn", "one"]
    return order


def _line(r: Round) -> str:
    errors = sum(not q.ok for q in r.requests)
    text = (
        f"{r.wall_s:6.2f} s, {r.tokens_per_s:6.1f} tok/s, {errors} errors, "
        f"{r.counters.loads} loads, {r.counters.evictions} evictions"
    )
    first = next((q.error for q in r.requests if q.error), None)
    return f"{text} (first error: {first})" if first else text


async def measure(url: str, admin_key: str, key: str, names: list[str], run: Run) -> None:
    cfg = run.cfg
    target = Target(name="gateway", base_url=url, model=names[0], api_key=key)
    client = make_client(target, cfg.bench())
    admin = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=60)
    rng = random.Random(cfg.seed)
    try:
        # Warm-up, not counted: every adapter once (first loads), then a round of each workload.
        start = await read_counters(admin)
        t0 = time.perf_counter()
        for name in [*names[1:], names[0]]:
            body = chat_body(name, "Hi", BenchConfig(1, 1, 1, 1, False))
            res = await send_one(client, body)
            if not res.ok:
                raise RuntimeError(f"warm-up request to {name} failed: {res.error}")
        _progress(f"warm-up: touched {len(names)} adapters in {time.perf_counter() - t0:.1f} s")
        for w in WORKLOADS:
            r = await run_round(client, admin, cfg, w, pick_models(w, names, cfg.concurrency, rng), 0)
            _progress(f"warm-up {LABELS[w]:11s}: {_line(r)}")
            await asyncio.sleep(SETTLE_S)
        run.setup_counters = (await read_counters(admin)) - start
        for slot, w in enumerate(abba(cfg.rounds), start=1):
            r = await run_round(client, admin, cfg, w, pick_models(w, names, cfg.per_round, rng), slot)
            run.rounds.append(r)
            now = await resident(admin)
            run.max_resident_seen = max(run.max_resident_seen, now)
            _progress(f"round {slot:2d} {LABELS[w]:11s}: {_line(r)} (resident now {now})")
            await asyncio.sleep(SETTLE_S)
    finally:
        await client.aclose()
        await admin.aclose()


# --- statistics and output ---------------------------------------------------------------------


def summarize(workload: str, rounds: list[Round]) -> Summary:
    mine = [r for r in rounds if r.workload == workload]
    reqs = [q for r in mine for q in r.requests]
    ok = [q for q in reqs if q.ok]
    wall = sum(r.wall_s for r in mine)
    tokens = sum(q.completion_tokens for q in ok)
    c = Counters()
    for r in mine:
        c = c + r.counters
    distinct = [d for r in mine for d in r.distinct_in_flight]
    return Summary(
        workload=workload,
        requests=len(reqs),
        errors=len(reqs) - len(ok),
        wall_s=wall,
        tokens_per_s=tokens / wall if wall else 0.0,
        tokens_per_request=tokens / len(ok) if ok else None,
        p50_ms=_ms(percentile([q.latency_s for q in ok], 50)),
        p95_ms=_ms(percentile([q.latency_s for q in ok], 95)),
        p50_ttft_ms=_ms(percentile([q.ttft_s for q in ok if q.ttft_s is not None], 50)),
        p95_ttft_ms=_ms(percentile([q.ttft_s for q in ok if q.ttft_s is not None], 95)),
        loads=c.loads,
        evictions=c.evictions,
        mean_load_ms=c.load_s_sum / c.load_count * 1000 if c.load_count else None,
        mean_distinct_in_flight=sum(distinct) / len(distinct) if distinct else None,
        first_error=next((q.error for q in reqs if q.error), None),
    )


def _n(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or not b else f"{a / b:.2f}"


def _mean_load_ms(c: Counters) -> float | None:
    return c.load_s_sum / c.load_count * 1000 if c.load_count else None


def advice(run: Run, one: Summary, churn: Summary) -> list[str]:
    """What keeps churn close to one adapter, from this run's numbers."""
    cfg = run.cfg
    notes: list[str] = []
    tput = churn.tokens_per_s / one.tokens_per_s if one.tokens_per_s else None
    load_ms = churn.mean_load_ms if churn.mean_load_ms is not None else _mean_load_ms(run.setup_counters)
    idle_ms = _mean_load_ms(run.setup_counters)
    gap = f"churn runs at {tput:.0%} of one adapter's throughput" if tput is not None else "no throughput ratio"
    notes.append(
        f"Here {gap}; p95 latency x{_ratio(churn.p95_ms, one.p95_ms)}, "
        f"p95 TTFT x{_ratio(churn.p95_ttft_ms, one.p95_ttft_ms)}, p50 latency x{_ratio(churn.p50_ms, one.p50_ms)}."
    )
    load_text = f"~{load_ms:.0f} ms each under load" if load_ms is not None else "an unmeasured time each"
    if idle_ms is not None:
        load_text += f" (~{idle_ms:.0f} ms in the mostly idle warm-up)"
    if churn.loads:
        miss = churn.loads / churn.requests if churn.requests else 0.0
        stall = churn.loads * (load_ms or 0) / 1000
        notes.append(
            f"Adapter loads cost {load_text}; churn did {churn.loads} loads and {churn.evictions} evictions "
            f"for {churn.requests} requests ({miss:.0%} misses): {stall:.1f} s of load calls in "
            f"{churn.wall_s:.1f} s of churn rounds. A load sits in front of the missing request's first token "
            "and the engine applies it between decode steps, so it shows in the tail (p95) more than the median."
        )
        notes.append(
            f"Raise TAILOR_MAX_RESIDENT_ADAPTERS (now {cfg.max_resident}) to the working set ({cfg.adapters} "
            f"adapters here): a rank-{ADAPTER_RANK} adapter of {BASE_MODEL} is {run.adapter_mb:.1f} MB on disk, so "
            f"keeping all {cfg.adapters} resident costs ~{run.adapter_mb * cfg.adapters:.0f} MB of engine memory "
            "(vLLM's CPU LoRA cache: --max-cpu-loras follows it) and leaves no loads after warm-up."
        )
        if run.max_resident_seen > cfg.max_resident:
            notes.append(
                f"The gateway held up to {run.max_resident_seen} adapters after a round (limit "
                f"{cfg.max_resident}): with {cfg.concurrency} streams every resident adapter can be in use when a "
                "load needs room, and the pool then goes over the limit rather than wait; size the limit for "
                "at least --concurrency distinct adapters."
            )
    else:
        notes.append(
            f"No adapter loads during the measured rounds: the working set ({cfg.adapters}) fits in "
            f"TAILOR_MAX_RESIDENT_ADAPTERS={cfg.max_resident}; loads happened only in warm-up "
            f"({run.setup_counters.loads}, ~{_n(idle_ms, 0)} ms each)."
        )
    distinct = churn.mean_distinct_in_flight
    if distinct is not None:
        if distinct > cfg.max_loras:
            notes.append(
                f"Beyond loads, batching: churn had {distinct:.1f} distinct adapters in flight on average "
                f"(--concurrency {cfg.concurrency}) but the engine batches at most TAILOR_ENGINE_MAX_LORAS="
                f"{cfg.max_loras} at once, so requests for other adapters wait for a slot; raise it towards "
                f"min(concurrency, working set) = {min(cfg.concurrency, cfg.adapters)} (costs max_loras x "
                "adapter size of engine memory and some per-step LoRA compute)."
            )
        else:
            notes.append(
                f"Churn had {distinct:.1f} distinct adapters in flight on average, within TAILOR_ENGINE_MAX_LORAS="
                f"{cfg.max_loras}: the rest of the gap is the multi-LoRA kernels doing per-adapter work in one batch."
            )
    return notes


def render(run: Run, markdown: bool) -> str:
    cfg = run.cfg
    one, churn = summarize("one", run.rounds), summarize("churn", run.rounds)
    rows = [
        ("requests (errors)", f"{one.requests} ({one.errors})", f"{churn.requests} ({churn.errors})", ""),
        (
            "completion tokens/s",
            _n(one.tokens_per_s),
            _n(churn.tokens_per_s),
            _ratio(churn.tokens_per_s, one.tokens_per_s),
        ),
        ("p50 latency (ms)", _n(one.p50_ms, 0), _n(churn.p50_ms, 0), _ratio(churn.p50_ms, one.p50_ms)),
        ("p95 latency (ms)", _n(one.p95_ms, 0), _n(churn.p95_ms, 0), _ratio(churn.p95_ms, one.p95_ms)),
        ("p50 TTFT (ms)", _n(one.p50_ttft_ms, 0), _n(churn.p50_ttft_ms, 0), _ratio(churn.p50_ttft_ms, one.p50_ttft_ms)),
        ("p95 TTFT (ms)", _n(one.p95_ttft_ms, 0), _n(churn.p95_ttft_ms, 0), _ratio(churn.p95_ttft_ms, one.p95_ttft_ms)),
        ("adapter loads", str(one.loads), str(churn.loads), ""),
        ("evictions", str(one.evictions), str(churn.evictions), ""),
        (
            "loads per request",
            _n(one.loads / one.requests if one.requests else None, 2),
            _n(churn.loads / churn.requests if churn.requests else None, 2),
            "",
        ),
        ("mean adapter load (ms)", _n(one.mean_load_ms, 0), _n(churn.mean_load_ms, 0), ""),
        (
            "distinct adapters in flight (mean)",
            _n(one.mean_distinct_in_flight, 1),
            _n(churn.mean_distinct_in_flight, 1),
            "",
        ),
    ]
    settings = [
        (
            "adapters (churn working set)",
            f"{cfg.adapters} x rank {ADAPTER_RANK} on {','.join(ADAPTER_TARGETS)} ({run.adapter_mb:.1f} MB each)",
        ),
        ("TAILOR_MAX_RESIDENT_ADAPTERS", str(cfg.max_resident)),
        ("TAILOR_ENGINE_MAX_LORAS (vLLM --max-loras)", str(cfg.max_loras)),
        ("vLLM --max-cpu-loras", str(cfg.max_cpu_loras)),
        ("concurrency (closed loop)", str(cfg.concurrency)),
        ("requests per workload", f"{cfg.per_round * cfg.rounds} ({cfg.rounds} rounds of {cfg.per_round}, ABBA)"),
        ("completion tokens per request", f"{cfg.max_tokens} (streamed, ignore_eos, temperature 0)"),
        ("model / machine", f"{BASE_MODEL}, {run.cpus} CPUs, 1-min load before {run.load_avg[0]:.2f}"),
        (
            "warm-up (not counted)",
            f"{run.setup_counters.loads} loads ({_n(_mean_load_ms(run.setup_counters), 0)} ms mean), "
            f"{run.setup_counters.evictions} evictions",
        ),
        ("gateway resident adapters after rounds (max)", str(run.max_resident_seen)),
    ]
    warnings = []
    for s in (one, churn):
        if s.errors:
            warnings.append(
                f"{LABELS[s.workload]}: {s.errors} of {s.requests} requests failed (first: {s.first_error})"
            )
        if s.tokens_per_request is not None and abs(s.tokens_per_request - cfg.max_tokens) > 1e-9:
            warnings.append(f"{LABELS[s.workload]}: {s.tokens_per_request:.2f} tokens/request, not {cfg.max_tokens}")
    if run.vllm_before:
        warnings.append(f"{run.vllm_before} other vLLM processes were running before the run: numbers are disturbed")
    notes = advice(run, one, churn)

    title = f"Adapter churn: {cfg.adapters} adapters, {cfg.max_resident} resident, {cfg.concurrency} streams"
    if markdown:
        out = [f"### {title}", "", "| metric | one adapter | churn | churn/one |", "|---|---:|---:|---:|"]
        out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
        out += ["", "| setting | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in settings]
        out += ["", "**What keeps it close**", ""] + [f"- {n}" for n in notes]
        out += [f"\n> warning: {w}" for w in warnings]
    else:
        width = max(len(r[0]) for r in rows)
        out = [title, "", f"{'metric':{width}s}  {'one adapter':>12s}  {'churn':>12s}  {'churn/one':>9s}"]
        out += [f"{a:{width}s}  {b:>12s}  {c:>12s}  {d:>9s}" for a, b, c, d in rows]
        out += ["", "settings:"] + [f"  {a}: {b}" for a, b in settings]
        out += ["", "what keeps it close:"] + [f"  - {n}" for n in notes]
        out += [f"warning: {w}" for w in warnings]
    return "\n".join(out) + "\n"


# --- main ------------------------------------------------------------------------------------


def _vllm_processes() -> int:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, timeout=10).stdout
        return sum("vllm.entrypoints" in line for line in out.splitlines())
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_churn", description=__doc__.split("\n\n")[0])
    p.add_argument("--adapters", type=int, default=12, help="adapters the churn workload spreads over")
    p.add_argument("--max-resident", type=int, default=4, help="TAILOR_MAX_RESIDENT_ADAPTERS")
    p.add_argument("--max-loras", type=int, default=4, help="TAILOR_ENGINE_MAX_LORAS (vLLM --max-loras)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--requests", type=int, default=48, help="per workload, split over --rounds")
    p.add_argument("--rounds", type=int, default=2, help="measured rounds per workload (ABBA)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=1, help="seed of the churn workload's adapter draws")
    p.add_argument("--adapter-cache", type=Path, help="reuse built adapters here (default: a temp dir, removed)")
    p.add_argument("--markdown", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.adapters < 2 or min(args.max_resident, args.max_loras, args.concurrency, args.requests, args.rounds) < 1:
        raise SystemExit("--adapters must be >= 2; the other counts >= 1")
    cfg = ChurnConfig(
        adapters=args.adapters,
        max_resident=args.max_resident,
        max_loras=args.max_loras,
        concurrency=args.concurrency,
        requests=args.requests,
        max_tokens=args.max_tokens,
        rounds=args.rounds,
        seed=args.seed,
    )
    cache = args.adapter_cache or Path(tempfile.mkdtemp(prefix="tailor-churn-adapters-"))
    try:
        specs = [
            AdapterSpec(rank=ADAPTER_RANK, targets=ADAPTER_TARGETS, seed=SEED_BASE + i) for i in range(cfg.adapters)
        ]
        paths = build_adapters(specs, cache, MODEL_DIR)
        adapter_mb = (paths[specs[0]] / "adapter_model.safetensors").stat().st_size / 1e6
        run = Run(
            cfg=cfg,
            cpus=len(os.sched_getaffinity(0)),
            adapter_mb=adapter_mb,
            vllm_before=_vllm_processes(),
            load_avg=os.getloadavg(),
        )
        env = {
            "TAILOR_RUN_TRAINER": "false",
            "TAILOR_MAX_RESIDENT_ADAPTERS": str(cfg.max_resident),
            "TAILOR_ENGINE_MAX_LORAS": str(cfg.max_loras),
        }
        with local_tailor(MODEL_DIR, env_extra=env) as server:
            key = create_tenant_key(server, TENANT)
            names = [f"churn-{i:02d}" for i in range(cfg.adapters)]
            with httpx.Client(
                base_url=server.url, headers={"Authorization": f"Bearer {server.admin_key}"}, timeout=120
            ) as admin:
                for name, spec in zip(names, specs, strict=True):
                    body = {"name": name, "path": str(paths[spec]), "activate": True}
                    r = admin.post(f"/admin/tenants/{TENANT}/adapters/register", json=body)
                    if r.status_code != 201:
                        raise RuntimeError(f"registering {name} failed: HTTP {r.status_code} {r.text[:300]}")
            _progress(f"registered {len(names)} adapters for tenant {TENANT}")
            asyncio.run(measure(server.url, server.admin_key, key, names, run))
    finally:
        if args.adapter_cache is None:
            shutil.rmtree(cache, ignore_errors=True)
    print(render(run, args.markdown), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
