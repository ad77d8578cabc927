"""Interactive latency without and with a batch running, the p95 ratio against its target, the table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from loadtests.bench_batch_priority.rounds import RoundResult
from loadtests.bench_batch_priority.workload import BenchConfig
from loadtests.machine import load_line, was_busy
from loadtests.stats import percentile

TARGET_P95_RATIO = 1.2  # p95 with a batch running <= this x p95 without


@dataclass
class Side:
    requests: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None


@dataclass
class Report:
    config: BenchConfig
    model: str
    without: Side
    with_batch: Side
    p95_ratio: float | None
    p50_ratio: float | None
    batch_lines_per_s_alone: float | None
    batch_lines_per_s_beside: float | None
    load_avg_before: tuple[float, float, float]
    load_avg_after: tuple[float, float, float]
    vllm_processes_before: int | None
    rounds: list[RoundResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def meets_target(self) -> bool:
        return self.p95_ratio is not None and self.p95_ratio <= TARGET_P95_RATIO


def side(rounds: Sequence[RoundResult]) -> Side:
    latencies = [x for r in rounds for x in r.latencies_s]
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)  # q in percent
    return Side(
        requests=len(latencies),
        errors=sum(r.errors for r in rounds),
        p50_ms=None if p50 is None else p50 * 1000,
        p95_ms=None if p95 is None else p95 * 1000,
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _rate(lines: int, seconds: float) -> float | None:
    return lines / seconds if seconds > 0 else None


def build_report(
    cfg: BenchConfig,
    model: str,
    rounds: list[RoundResult],
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
    vllm_before: int | None,
    cpus: int,
) -> Report:
    a, b = side([r for r in rounds if r.kind == "A"]), side([r for r in rounds if r.kind == "B"])
    with_batch = [r for r in rounds if r.kind == "B"]
    warnings = []
    if was_busy(load_before, cpus):
        warnings.append(
            f"machine was busy before the run (1-min load {load_before[0]:.2f} on {cpus} CPUs): "
            "latencies and ratios are less reliable"
        )
    if vllm_before:
        warnings.append(f"{vllm_before} other vLLM server(s) were running on this machine")
    if a.errors or b.errors:
        warnings.append(f"{a.errors + b.errors} interactive requests failed")
    return Report(
        config=cfg,
        model=model,
        without=a,
        with_batch=b,
        p95_ratio=_ratio(b.p95_ms, a.p95_ms),
        p50_ratio=_ratio(b.p50_ms, a.p50_ms),
        batch_lines_per_s_alone=_rate(
            sum(r.batch_alone_lines for r in with_batch), sum(r.batch_alone_s for r in with_batch)
        ),
        batch_lines_per_s_beside=_rate(sum(r.batch_lines for r in with_batch), sum(r.wall_s for r in with_batch)),
        load_avg_before=load_before,
        load_avg_after=load_after,
        vllm_processes_before=vllm_before,
        rounds=rounds,
        warnings=warnings,
    )


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render(rep: Report) -> str:
    c = rep.config
    verdict = "PASS" if rep.meets_target else "FAIL"
    rows = [
        ("metric", "without batch", "with batch", "with/without", "target"),
        (
            "interactive requests ok / failed",
            f"{rep.without.requests} / {rep.without.errors}",
            f"{rep.with_batch.requests} / {rep.with_batch.errors}",
            "",
            "",
        ),
        (
            "p50 latency ms",
            _num(rep.without.p50_ms, ",.0f"),
            _num(rep.with_batch.p50_ms, ",.0f"),
            _num(rep.p50_ratio, ".2f"),
            "",
        ),
        (
            "p95 latency ms",
            _num(rep.without.p95_ms, ",.0f"),
            _num(rep.with_batch.p95_ms, ",.0f"),
            _num(rep.p95_ratio, ".2f"),
            f"<= {TARGET_P95_RATIO} {verdict}",
        ),
        (
            "batch lines/s (alone / beside)",
            "",
            f"{_num(rep.batch_lines_per_s_alone, '.2f')} / {_num(rep.batch_lines_per_s_beside, '.2f')}",
            "",
            "",
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    facts = [
        f"model {rep.model}; {c.clients} interactive clients x {c.requests} requests per round, "
        f"{c.rounds} A and {c.rounds} B rounds (ABAB); every request max_tokens {c.max_tokens} (ignore_eos); "
        f"batches of {c.batch_lines} lines",
        load_line(rep.load_avg_before, rep.load_avg_after),
    ]
    out = ["Interactive latency with and without a batch running", "", *(f"- {f}" for f in facts), "", *lines]
    if rep.warnings:
        out += ["", *(f"- WARNING: {w}" for w in rep.warnings)]
    return "\n".join(out)
