"""Per-target summaries, the gateway/direct ratios against the overhead targets, and the table."""

from __future__ import annotations

from dataclasses import dataclass, field

from loadtests.bench_gateway.rounds import BenchConfig, RoundResult
from loadtests.machine import load_line, was_busy
from loadtests.pooled import Pooled
from loadtests.stats import num, to_ms

TARGET_THROUGHPUT_RATIO = 0.98  # gateway tokens/s >= this x direct
TARGET_P50_RATIO = 1.02  # gateway p50 latency <= this x direct


@dataclass
class TargetSummary:
    name: str
    rounds: int
    requests: int
    errors: int
    wall_s: float
    requests_per_s: float
    tokens_per_s: float
    tokens_per_request: float | None
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    p50_ttft_ms: float | None
    mean_tpot_ms: float | None


@dataclass
class MachineFacts:
    cpu_count: int | None
    usable_cpus: int
    cpu_model: str
    python: str
    engine_version: str
    vllm_processes_before: int | None  # None: not counted (external engine may be one of them)
    load_avg_before: tuple[float, float, float]
    load_avg_after: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass
class Report:
    config: BenchConfig
    model: str
    machine: MachineFacts
    direct: TargetSummary
    gateway: TargetSummary
    ratios: dict[str, float | None]
    verdicts: dict[str, bool]
    rounds: list[RoundResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def summarize(name: str, rounds: list[RoundResult]) -> TargetSummary:
    mine = [r for r in rounds if r.target == name]
    pool = Pooled.of(mine)
    tpots = [
        (q.latency_s - q.ttft_s) / (q.completion_tokens - 1)
        for q in pool.ok
        if q.ttft_s is not None and q.completion_tokens > 1
    ]
    return TargetSummary(
        name=name,
        rounds=len(mine),
        requests=len(pool.requests),
        errors=pool.errors,
        wall_s=pool.wall_s,
        requests_per_s=pool.per_s(len(pool.ok)),
        tokens_per_s=pool.tokens_per_s,
        tokens_per_request=pool.tokens_per_request,
        p50_latency_ms=pool.latency_ms(50),
        p95_latency_ms=pool.latency_ms(95),
        p50_ttft_ms=pool.ttft_ms(50),
        mean_tpot_ms=to_ms(sum(tpots) / len(tpots)) if tpots else None,
    )


def ratio(gateway: float | None, direct: float | None) -> float | None:
    if gateway is None or not direct:
        return None
    return gateway / direct


def build_report(cfg: BenchConfig, model: str, machine: MachineFacts, rounds: list[RoundResult]) -> Report:
    direct, gateway = summarize("direct", rounds), summarize("gateway", rounds)
    ratios = {
        "requests_per_s": ratio(gateway.requests_per_s, direct.requests_per_s),
        "tokens_per_s": ratio(gateway.tokens_per_s, direct.tokens_per_s),
        "p50_latency": ratio(gateway.p50_latency_ms, direct.p50_latency_ms),
        "p95_latency": ratio(gateway.p95_latency_ms, direct.p95_latency_ms),
        "p50_ttft": ratio(gateway.p50_ttft_ms, direct.p50_ttft_ms),
        "mean_tpot": ratio(gateway.mean_tpot_ms, direct.mean_tpot_ms),
    }
    tput, p50 = ratios["tokens_per_s"], ratios["p50_latency"]
    verdicts = {
        "throughput": tput is not None and tput >= TARGET_THROUGHPUT_RATIO,
        "p50_latency": p50 is not None and p50 <= TARGET_P50_RATIO,
    }
    warnings = []
    for s in (direct, gateway):
        if s.errors:
            warnings.append(f"{s.name}: {s.errors} of {s.requests} requests failed")
        if s.tokens_per_request is not None and abs(s.tokens_per_request - cfg.max_tokens) > 1e-9:
            warnings.append(
                f"{s.name}: {s.tokens_per_request:.2f} tokens/request, not "
                f"{cfg.max_tokens}: ignore_eos was not honoured, work differs"
            )
    if machine.vllm_processes_before:
        warnings.append(f"{machine.vllm_processes_before} other vLLM processes were running: numbers are disturbed")
    # Other work shares the cores with the engine; it costs the gateway rounds more, since the
    # gateway's own CPU is what it competes with, so the ratios come out pessimistic.
    if was_busy(machine.load_avg_before, machine.usable_cpus):
        warnings.append(
            f"machine was busy before the run (1-min load "
            f"{machine.load_avg_before[0]:.2f} on {machine.usable_cpus} CPUs): "
            "ratios are less reliable"
        )
    return Report(
        config=cfg,
        model=model,
        machine=machine,
        direct=direct,
        gateway=gateway,
        ratios=ratios,
        verdicts=verdicts,
        rounds=rounds,
        warnings=warnings,
    )


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def table_rows(rep: Report) -> list[list[str]]:
    d, g, r = rep.direct, rep.gateway, rep.ratios
    return [
        ["metric", "direct", "gateway", "gateway/direct", "target"],
        [
            "requests ok / failed",
            f"{d.requests - d.errors} / {d.errors}",
            f"{g.requests - g.errors} / {g.errors}",
            "",
            "",
        ],
        ["requests/s", num(d.requests_per_s, 2), num(g.requests_per_s, 2), num(r["requests_per_s"], 3), ""],
        [
            "completion tokens/s",
            num(d.tokens_per_s, 1),
            num(g.tokens_per_s, 1),
            num(r["tokens_per_s"], 3),
            f">= {TARGET_THROUGHPUT_RATIO} {_verdict(rep.verdicts['throughput'])}",
        ],
        [
            "p50 latency ms",
            num(d.p50_latency_ms, 1),
            num(g.p50_latency_ms, 1),
            num(r["p50_latency"], 3),
            f"<= {TARGET_P50_RATIO} {_verdict(rep.verdicts['p50_latency'])}",
        ],
        ["p95 latency ms", num(d.p95_latency_ms, 1), num(g.p95_latency_ms, 1), num(r["p95_latency"], 3), ""],
        ["p50 TTFT ms", num(d.p50_ttft_ms, 1), num(g.p50_ttft_ms, 1), num(r["p50_ttft"], 3), ""],
        ["mean TPOT ms", num(d.mean_tpot_ms, 2), num(g.mean_tpot_ms, 2), num(r["mean_tpot"], 3), ""],
        ["tokens/request", num(d.tokens_per_request, 1), num(g.tokens_per_request, 1), "", ""],
    ]


def render_table(rows: list[list[str]], markdown: bool) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(row: list[str]) -> str:
        numbers = [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        cells = [row[0].ljust(widths[0]), *numbers]
        return ("| " + " | ".join(cells) + " |") if markdown else "  ".join(cells)

    rule = (
        "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
        if markdown
        else "  ".join("-" * w for w in widths)
    )
    return "\n".join([line(rows[0]), rule, *(line(row) for row in rows[1:])])


def render(rep: Report, markdown: bool) -> str:
    c, m = rep.config, rep.machine
    bullet = "- " if markdown else ""
    facts = [
        f"machine: {m.cpu_count} CPUs ({m.usable_cpus} usable), {m.cpu_model}; Python {m.python}",
        f"engine: vLLM {m.engine_version}, model {rep.model}",
        f"workload: chat, {'streamed' if c.stream else 'not streamed'}, {c.concurrency} "
        f"concurrent, max_tokens {c.max_tokens} (ignore_eos), {c.rounds} rounds x "
        f"{c.requests_per_round} requests per target, ABBA order, 1 warm-up round each",
        load_line(m.load_avg_before, m.load_avg_after),
        "tok/s per round: " + ", ".join(f"{r.target[0].upper()}{r.slot} {r.tokens_per_s:.0f}" for r in rep.rounds),
    ]
    title = "## Tailor gateway vs direct vLLM" if markdown else "Tailor gateway vs direct vLLM"
    parts = [title, "", *(bullet + f for f in facts), "", render_table(table_rows(rep), markdown)]
    if rep.warnings:
        parts += ["", *(f"{bullet}WARNING: {w}" for w in rep.warnings)]
    return "\n".join(parts)
