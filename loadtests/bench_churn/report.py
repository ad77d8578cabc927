"""The churn benchmark's summary per workload, its table, and what keeps churn close to one adapter."""

from __future__ import annotations

from dataclasses import dataclass

from loadtests.bench_churn.rounds import LABELS, Counters, Round, Run
from loadtests.chat_client import first_error
from loadtests.launcher import BASE_MODEL
from loadtests.lora_adapters import UNIFORM_RANK, UNIFORM_TARGETS
from loadtests.pooled import Pooled
from loadtests.stats import num


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


def summarize(workload: str, rounds: list[Round]) -> Summary:
    mine = [r for r in rounds if r.workload == workload]
    pool = Pooled.of(mine)
    c = Counters()
    for r in mine:
        c = c + r.counters
    distinct = [d for r in mine for d in r.distinct_in_flight]
    return Summary(
        workload=workload,
        requests=len(pool.requests),
        errors=pool.errors,
        wall_s=pool.wall_s,
        tokens_per_s=pool.tokens_per_s,
        tokens_per_request=pool.tokens_per_request,
        p50_ms=pool.latency_ms(50),
        p95_ms=pool.latency_ms(95),
        p50_ttft_ms=pool.ttft_ms(50),
        p95_ttft_ms=pool.ttft_ms(95),
        loads=c.loads,
        evictions=c.evictions,
        mean_load_ms=_mean_load_ms(c),
        mean_distinct_in_flight=sum(distinct) / len(distinct) if distinct else None,
        first_error=first_error(pool.requests),
    )


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
            f"adapters here): a rank-{UNIFORM_RANK} adapter of {BASE_MODEL} is {run.adapter_mb:.1f} MB on disk, so "
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
            f"({run.setup_counters.loads}, ~{num(idle_ms, 0)} ms each)."
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
            num(one.tokens_per_s, 1),
            num(churn.tokens_per_s, 1),
            _ratio(churn.tokens_per_s, one.tokens_per_s),
        ),
        ("p50 latency (ms)", num(one.p50_ms, 0), num(churn.p50_ms, 0), _ratio(churn.p50_ms, one.p50_ms)),
        ("p95 latency (ms)", num(one.p95_ms, 0), num(churn.p95_ms, 0), _ratio(churn.p95_ms, one.p95_ms)),
        (
            "p50 TTFT (ms)",
            num(one.p50_ttft_ms, 0),
            num(churn.p50_ttft_ms, 0),
            _ratio(churn.p50_ttft_ms, one.p50_ttft_ms),
        ),
        (
            "p95 TTFT (ms)",
            num(one.p95_ttft_ms, 0),
            num(churn.p95_ttft_ms, 0),
            _ratio(churn.p95_ttft_ms, one.p95_ttft_ms),
        ),
        ("adapter loads", str(one.loads), str(churn.loads), ""),
        ("evictions", str(one.evictions), str(churn.evictions), ""),
        (
            "loads per request",
            num(one.loads / one.requests if one.requests else None, 2),
            num(churn.loads / churn.requests if churn.requests else None, 2),
            "",
        ),
        ("mean adapter load (ms)", num(one.mean_load_ms, 0), num(churn.mean_load_ms, 0), ""),
        (
            "distinct adapters in flight (mean)",
            num(one.mean_distinct_in_flight, 1),
            num(churn.mean_distinct_in_flight, 1),
            "",
        ),
    ]
    settings = [
        (
            "adapters (churn working set)",
            f"{cfg.adapters} x rank {UNIFORM_RANK} on {','.join(UNIFORM_TARGETS)} ({run.adapter_mb:.1f} MB each)",
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
            f"{run.setup_counters.loads} loads ({num(_mean_load_ms(run.setup_counters), 0)} ms mean), "
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
