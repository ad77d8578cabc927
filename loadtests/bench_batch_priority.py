"""Interactive latency while a batch runs: batch requests must yield to interactive ones.

    python -m loadtests.bench_batch_priority            # about 6 minutes on 2 CPU cores
    python -m loadtests.bench_batch_priority --quick    # the wiring: small rounds, a minute or two
    python -m loadtests.bench_batch_priority --busy 4   # batch lines do not yield in the gateway (compare)
    python -m loadtests.bench_batch_priority --gateway-url http://127.0.0.1:8000 --api-key tk-...   # a running Tailor

Without --gateway-url it starts its own Tailor (`python -m gateway.cli serve`, throwaway data
directory, no trainer) with its real child vLLM engine, which Tailor starts with
`--scheduling-policy priority`, and creates a tenant and key through the admin API.

Rounds alternate ABAB: in an A round `clients` closed-loop interactive clients each send
`requests` chat completions back to back, alone; a B round first creates a batch of
`batch_lines` chat requests, waits until its first line is answered (the batch runs at full
speed), counts the lines it answers alone for `alone_s`, then runs the same interactive
clients while it goes on, counts the lines answered meanwhile, and cancels it (waiting until
its lines in flight have finished) before the next round. Every request, interactive or batch,
is a chat completion at temperature 0 with `max_tokens` and `ignore_eos` (a vLLM extension the
gateway passes through), so each generates exactly that many tokens. After one uncounted
warm-up request per client, interactive latencies are pooled per kind of round.

Printed: p50/p95 latency of interactive requests without and with a batch running, the ratio
p95(with)/p95(without) against the 1.2 target, and the batch lines answered per second alone
and beside the interactive clients. The exit code is 0 whatever the verdict: this measures, it
does not test. On a shared machine the figures move with whatever else runs: the load average
before and after is printed, and a warning when the machine was busy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loadtests.bench_gateway import BUSY_LOAD_PER_CPU, PROMPTS, count_vllm_processes, percentile
from loadtests.local_server import BASE_MODEL, MODEL_DIR, _progress, create_tenant_key, local_tailor

CHAT_PATH = "/v1/chat/completions"
TARGET_P95_RATIO = 1.2  # p95 with a batch running <= this x p95 without
POLL_S = 0.2
SETTLE_S = 1.0  # after each round, untimed: the log flush and the engine's bookkeeping settle
ENDED = ("completed", "failed", "expired", "cancelled")


@dataclass(frozen=True)
class BenchConfig:
    clients: int = 2
    requests: int = 12  # per client per round
    rounds: int = 3  # A and B rounds each
    max_tokens: int = 32
    batch_lines: int = 400  # more than a B round can answer, so the batch runs throughout
    alone_s: float = 5.0


QUICK = BenchConfig(clients=2, requests=3, rounds=1, max_tokens=8, batch_lines=40, alone_s=2.0)


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


# --- requests ---------------------------------------------------------------------------------


def chat_body(model: str, prompt: str, cfg: BenchConfig) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": cfg.max_tokens,
        "ignore_eos": True,
    }


def batch_file(model: str, cfg: BenchConfig) -> bytes:
    """The batch's input file: `batch_lines` chat requests, the same work as interactive ones."""
    lines = (
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": CHAT_PATH,
            "body": chat_body(model, PROMPTS[i % len(PROMPTS)], cfg),
        }
        for i in range(cfg.batch_lines)
    )
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


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


# --- a batch ----------------------------------------------------------------------------------


async def _json(resp: Awaitable[httpx.Response], what: str) -> dict[str, Any]:
    r = await resp
    if r.status_code != 200:
        raise RuntimeError(f"{what}: {r.status_code} {r.text[:300]}")
    return r.json()  # type: ignore[no-any-return]


async def start_batch(client: httpx.AsyncClient, model: str, cfg: BenchConfig) -> str:
    files = {"file": ("bench.jsonl", batch_file(model, cfg), "application/jsonl")}
    uploaded = await _json(client.post("/v1/files", files=files, data={"purpose": "batch"}), "uploading the batch")
    body = {"input_file_id": uploaded["id"], "endpoint": CHAT_PATH, "completion_window": "24h"}
    batch = await _json(client.post("/v1/batches", json=body), "creating the batch")
    return str(batch["id"])


async def batch_state(client: httpx.AsyncClient, batch_id: str) -> tuple[str, int]:
    """(status, lines answered so far)."""
    batch = await _json(client.get(f"/v1/batches/{batch_id}"), "reading the batch")
    counts = batch["request_counts"]
    return str(batch["status"]), int(counts["completed"]) + int(counts["failed"])


async def wait_for(
    client: httpx.AsyncClient, batch_id: str, done: Callable[[str, int], bool], timeout_s: float
) -> tuple[str, int]:
    deadline = time.monotonic() + timeout_s
    while True:
        status, answered = await batch_state(client, batch_id)
        if done(status, answered):
            return status, answered
        if status in ENDED or time.monotonic() > deadline:
            raise RuntimeError(f"batch {batch_id} is {status} with {answered} lines answered; it was expected to run")
        await asyncio.sleep(POLL_S)


async def stop_batch(client: httpx.AsyncClient, batch_id: str, timeout_s: float) -> None:
    """Cancel the batch (unless it ended already) and wait until its lines in flight finished."""
    r = await client.post(f"/v1/batches/{batch_id}/cancel")
    if r.status_code != 200 and (await batch_state(client, batch_id))[0] not in ENDED:
        raise RuntimeError(f"cancelling the batch: {r.status_code} {r.text[:300]}")
    await wait_for(client, batch_id, lambda status, _n: status in ENDED, timeout_s)


# --- rounds -----------------------------------------------------------------------------------


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
        _progress(round_line(result))
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
    if load_before[0] > BUSY_LOAD_PER_CPU * cpus:
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
        "load avg before/after: "
        + " ".join(f"{x:.2f}" for x in rep.load_avg_before)
        + " / "
        + " ".join(f"{x:.2f}" for x in rep.load_avg_after),
    ]
    out = ["Interactive latency with and without a batch running", "", *(f"- {f}" for f in facts), "", *lines]
    if rep.warnings:
        out += ["", *(f"- WARNING: {w}" for w in rep.warnings)]
    return "\n".join(out)


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.bench_batch_priority", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--gateway-url", help="A running Tailor; default: start one here.")
    p.add_argument("--api-key", help="A tenant key of that Tailor (with --gateway-url).")
    p.add_argument("--model", default=BASE_MODEL)
    p.add_argument("--quick", action="store_true", help="Small rounds: the wiring, not figures.")
    p.add_argument("--clients", type=int)
    p.add_argument("--requests", type=int, help="Requests per client per round.")
    p.add_argument("--rounds", type=int, help="A rounds and B rounds each.")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--batch-lines", type=int)
    p.add_argument(
        "--busy", type=int, help="TAILOR_BATCH_CONCURRENCY_BUSY of the Tailor started here (default: its own, 1)."
    )
    p.add_argument("--json", type=Path, help="Also write the report as JSON here.")
    args = p.parse_args(argv)
    if bool(args.gateway_url) != bool(args.api_key):
        p.error("--gateway-url and --api-key go together")
    if args.gateway_url and args.busy is not None:
        p.error("--busy sets up the Tailor started here; a running one has its own settings")
    return args


def config_from(args: argparse.Namespace) -> BenchConfig:
    base = QUICK if args.quick else BenchConfig()
    given = {
        "clients": args.clients,
        "requests": args.requests,
        "rounds": args.rounds,
        "max_tokens": args.max_tokens,
        "batch_lines": args.batch_lines,
    }
    return BenchConfig(**{**asdict(base), **{k: v for k, v in given.items() if v is not None}})


def gateway_env(busy: int | None) -> dict[str, str]:
    """The Tailor started here: serving and batches only, batches picked up at once."""
    env = {"TAILOR_RUN_TRAINER": "false", "TAILOR_BATCH_POLL_S": "0.2"}
    if busy is not None:
        env["TAILOR_BATCH_CONCURRENCY_BUSY"] = str(busy)
    return env


def benchmark(cfg: BenchConfig, url: str, key: str, model: str, vllm_before: int | None) -> Report:
    load_before = os.getloadavg()

    async def go() -> list[RoundResult]:
        headers = {"authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as client:
            return await run_rounds(client, model, cfg)

    rounds = asyncio.run(go())
    cpus = len(os.sched_getaffinity(0))
    return build_report(cfg, model, rounds, load_before, os.getloadavg(), vllm_before, cpus)


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config_from(args)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        if args.gateway_url:
            report = benchmark(cfg, args.gateway_url, args.api_key, args.model, None)
        else:
            vllm_before = count_vllm_processes()  # before our own: any other competes with the run
            with local_tailor(MODEL_DIR, env_extra=gateway_env(args.busy)) as server:
                key = create_tenant_key(server)
                report = benchmark(cfg, server.url, key, args.model, vllm_before)
    except KeyboardInterrupt:
        _progress("interrupted")
        return 130
    except RuntimeError as exc:
        _progress(f"benchmark failed: {exc}")
        return 1
    print(render(report), flush=True)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
