"""Gateway overhead benchmark: Tailor against the same vLLM engine called directly.

    python -m loadtests.bench_gateway             # starts its own Tailor; 16 streams, 6 rounds each
    python -m loadtests.bench_gateway --quick     # smoke run: 4 streams, 2 rounds of 8, 16 tokens
    python -m loadtests.bench_gateway --markdown --json bench.json
    python -m loadtests.bench_gateway --gateway-url http://127.0.0.1:8000 --api-key sk-... \\
        --engine-url http://127.0.0.1:8100 --engine-key ... --model SmolLM2-135M-Instruct   # a running Tailor

Without --gateway-url it starts vLLM the way `tailor serve` starts its child engine (same command
line and environment) on a free port with a random key, then Tailor (`python -m gateway.cli
serve`, throwaway data directory) with that engine as an operator-run one (TAILOR_ENGINE_URLS,
TAILOR_ENGINE_API_KEY), creates a tenant and key through the admin API, and benchmarks the
gateway against that engine called directly with its key, so both paths share one engine. (A
child engine started by the gateway itself takes only the gateway's own per-process key.)
The --engine-key of an engine run by hand defaults to TAILOR_ENGINE_API_KEY from the environment.

Every request is a chat completion with temperature 0, `max_tokens` N and `ignore_eos` (a vLLM
extension the gateway passes through), so each one generates exactly N tokens and both paths
do identical engine work. A closed loop of `concurrency` workers sends a round's requests back
to back. After one uncounted warm-up round per target, rounds alternate ABBA (direct, gateway,
gateway, direct, ...) so drift (thermal, other tenants of the machine, cache state) falls on
both targets alike. The ratios gateway/direct are printed against the overhead targets:
throughput >= 0.98 and p50 latency <= 1.02. The exit code is 0 whatever the verdict: this
measures, it does not test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from loadtests.local_server import BASE_MODEL, MODEL_DIR, _progress, create_tenant_key, local_tailor

CHAT_PATH = "/v1/chat/completions"

TARGET_THROUGHPUT_RATIO = 0.98  # gateway tokens/s >= this x direct
TARGET_P50_RATIO = 1.02  # gateway p50 latency <= this x direct
BUSY_LOAD_PER_CPU = 0.5  # 1-min load average per CPU above which we warn the run was disturbed
# Pause after each round, not timed: the gateway's interaction-log flush and the engine's
# bookkeeping for one round must not land inside the next round (of the other target).
SETTLE_S = 1.0

# Varied short questions; request i of every round uses PROMPTS[i % len], on both targets.
PROMPTS = (
    "What is the capital of France?",
    "Explain photosynthesis in one sentence.",
    "Give me three tips for writing clean Python code.",
    "Why is the sky blue?",
    "Write a haiku about autumn leaves.",
    "What is the difference between a list and a tuple?",
    "How do vaccines work?",
    "Suggest a name for a friendly robot.",
)


# --- configuration and results --------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    concurrency: int = 16
    max_tokens: int = 64
    rounds: int = 6
    requests_per_round: int = 32
    stream: bool = True


QUICK = BenchConfig(concurrency=4, max_tokens=16, rounds=2, requests_per_round=8)


@dataclass(frozen=True)
class Target:
    name: str  # "direct" or "gateway"
    base_url: str
    model: str
    api_key: str | None = None


@dataclass
class RequestResult:
    ok: bool
    latency_s: float
    ttft_s: float | None = None
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class RoundResult:
    target: str
    slot: int  # position in the interleaved schedule, 1-based
    wall_s: float
    requests: list[RequestResult]

    @property
    def tokens_per_s(self) -> float:
        return sum(r.completion_tokens for r in self.requests if r.ok) / self.wall_s


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


# --- one request ----------------------------------------------------------------------------


def request_body(model: str, prompt: str, cfg: BenchConfig) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": cfg.max_tokens,
        # Generate exactly max_tokens on both paths, whatever the model would say.
        "ignore_eos": True,
        "stream": cfg.stream,
    }
    if cfg.stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def send_one(client: httpx.AsyncClient, body: dict[str, Any]) -> RequestResult:
    started = time.perf_counter()
    try:
        if body["stream"]:
            return await _send_stream(client, body, started)
        return await _send_plain(client, body, started)
    except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
        return RequestResult(ok=False, latency_s=time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")


async def _send_stream(client: httpx.AsyncClient, body: dict[str, Any], started: float) -> RequestResult:
    ttft: float | None = None
    tokens: int | None = None
    async with client.stream("POST", CHAT_PATH, content=orjson.dumps(body)) as resp:
        if resp.status_code != 200:
            raw = await resp.aread()
            return _failed(started, f"HTTP {resp.status_code}: {raw[:200]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            chunk = orjson.loads(payload)
            if "error" in chunk:
                return _failed(started, f"stream error: {str(chunk['error'])[:200]}")
            # The first chunk only carries the role; TTFT is the first piece of text.
            if ttft is None and _has_content(chunk):
                ttft = time.perf_counter() - started
            usage = chunk.get("usage")
            if usage:
                tokens = usage.get("completion_tokens")
    latency = time.perf_counter() - started
    if tokens is None:
        return _failed(started, "stream ended without a usage chunk")
    return RequestResult(ok=True, latency_s=latency, ttft_s=ttft, completion_tokens=tokens)


async def _send_plain(client: httpx.AsyncClient, body: dict[str, Any], started: float) -> RequestResult:
    resp = await client.post(CHAT_PATH, content=orjson.dumps(body))
    latency = time.perf_counter() - started
    if resp.status_code != 200:
        return _failed(started, f"HTTP {resp.status_code}: {resp.text[:200]}")
    usage = orjson.loads(resp.content).get("usage") or {}
    return RequestResult(ok=True, latency_s=latency, completion_tokens=int(usage.get("completion_tokens") or 0))


def _has_content(chunk: dict[str, Any]) -> bool:
    return any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or ())


def _failed(started: float, error: str) -> RequestResult:
    return RequestResult(ok=False, latency_s=time.perf_counter() - started, error=error)


# --- rounds and the interleaved schedule ----------------------------------------------------


def make_client(target: Target, cfg: BenchConfig) -> httpx.AsyncClient:
    headers = {"content-type": "application/json", **_auth(target.api_key)}
    # Room for every worker to keep its own connection: the pool must never be what queues.
    slots = cfg.concurrency * 2 + 8
    return httpx.AsyncClient(
        base_url=target.base_url,
        headers=headers,
        limits=httpx.Limits(max_connections=slots, max_keepalive_connections=slots),
        timeout=httpx.Timeout(600.0, connect=10.0),
    )


async def run_round(client: httpx.AsyncClient, target: Target, cfg: BenchConfig, slot: int) -> RoundResult:
    """A closed loop: `concurrency` workers, each sending its next request as one finishes."""
    numbers = iter(range(cfg.requests_per_round))  # shared; next() never awaits, so no race
    results: list[RequestResult] = []

    async def worker() -> None:
        for i in numbers:
            body = request_body(target.model, PROMPTS[i % len(PROMPTS)], cfg)
            results.append(await send_one(client, body))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(cfg.concurrency, cfg.requests_per_round))))
    return RoundResult(target=target.name, slot=slot, wall_s=time.perf_counter() - started, requests=results)


def abba_schedule(rounds: int) -> list[str]:
    """direct, gateway, gateway, direct, direct, gateway, ...: each goes first equally often."""
    order: list[str] = []
    for pair in range(rounds):
        order += ["direct", "gateway"] if pair % 2 == 0 else ["gateway", "direct"]
    return order


async def run_interleaved(targets: dict[str, Target], cfg: BenchConfig) -> list[RoundResult]:
    clients = {name: make_client(t, cfg) for name, t in targets.items()}
    try:
        for name in ("direct", "gateway"):
            warm = await run_round(clients[name], targets[name], cfg, slot=0)
            _progress(f"warm-up {name}: {_round_line(warm)}")
            await asyncio.sleep(SETTLE_S)
        rounds: list[RoundResult] = []
        for slot, name in enumerate(abba_schedule(cfg.rounds), start=1):
            result = await run_round(clients[name], targets[name], cfg, slot=slot)
            rounds.append(result)
            _progress(f"round {slot:2d} {name:7s}: {_round_line(result)}")
            await asyncio.sleep(SETTLE_S)
        return rounds
    finally:
        await asyncio.gather(*(c.aclose() for c in clients.values()))


def _round_line(r: RoundResult) -> str:
    errors = sum(not q.ok for q in r.requests)
    line = f"{r.wall_s:6.2f} s, {r.tokens_per_s:7.1f} tok/s, {errors} errors"
    first_error = next((q.error for q in r.requests if q.error), None)
    return f"{line} (first: {first_error})" if first_error else line


# --- statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def summarize(name: str, rounds: list[RoundResult]) -> TargetSummary:
    mine = [r for r in rounds if r.target == name]
    requests = [q for r in mine for q in r.requests]
    ok = [q for q in requests if q.ok]
    # Throughput over the summed wall time of this target's rounds only (not the pauses).
    wall = sum(r.wall_s for r in mine)
    tokens = sum(q.completion_tokens for q in ok)
    tpots = [
        (q.latency_s - q.ttft_s) / (q.completion_tokens - 1)
        for q in ok
        if q.ttft_s is not None and q.completion_tokens > 1
    ]
    return TargetSummary(
        name=name,
        rounds=len(mine),
        requests=len(requests),
        errors=len(requests) - len(ok),
        wall_s=wall,
        requests_per_s=len(ok) / wall if wall else 0.0,
        tokens_per_s=tokens / wall if wall else 0.0,
        tokens_per_request=tokens / len(ok) if ok else None,
        p50_latency_ms=_ms(percentile([q.latency_s for q in ok], 50)),
        p95_latency_ms=_ms(percentile([q.latency_s for q in ok], 95)),
        p50_ttft_ms=_ms(percentile([q.ttft_s for q in ok if q.ttft_s is not None], 50)),
        mean_tpot_ms=_ms(sum(tpots) / len(tpots)) if tpots else None,
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
    if machine.load_avg_before[0] > BUSY_LOAD_PER_CPU * machine.usable_cpus:
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


# --- output ---------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


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
        ["requests/s", _num(d.requests_per_s, 2), _num(g.requests_per_s, 2), _num(r["requests_per_s"], 3), ""],
        [
            "completion tokens/s",
            _num(d.tokens_per_s),
            _num(g.tokens_per_s),
            _num(r["tokens_per_s"], 3),
            f">= {TARGET_THROUGHPUT_RATIO} {_verdict(rep.verdicts['throughput'])}",
        ],
        [
            "p50 latency ms",
            _num(d.p50_latency_ms),
            _num(g.p50_latency_ms),
            _num(r["p50_latency"], 3),
            f"<= {TARGET_P50_RATIO} {_verdict(rep.verdicts['p50_latency'])}",
        ],
        ["p95 latency ms", _num(d.p95_latency_ms), _num(g.p95_latency_ms), _num(r["p95_latency"], 3), ""],
        ["p50 TTFT ms", _num(d.p50_ttft_ms), _num(g.p50_ttft_ms), _num(r["p50_ttft"], 3), ""],
        ["mean TPOT ms", _num(d.mean_tpot_ms, 2), _num(g.mean_tpot_ms, 2), _num(r["mean_tpot"], 3), ""],
        ["tokens/request", _num(d.tokens_per_request, 1), _num(g.tokens_per_request, 1), "", ""],
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
        "load avg before/after: "
        + " ".join(f"{x:.2f}" for x in m.load_avg_before)
        + " / "
        + " ".join(f"{x:.2f}" for x in m.load_avg_after),
        "tok/s per round: " + ", ".join(f"{r.target[0].upper()}{r.slot} {r.tokens_per_s:.0f}" for r in rep.rounds),
    ]
    title = "## Tailor gateway vs direct vLLM" if markdown else "Tailor gateway vs direct vLLM"
    parts = [title, "", *(bullet + f for f in facts), "", render_table(table_rows(rep), markdown)]
    if rep.warnings:
        parts += ["", *(f"{bullet}WARNING: {w}" for w in rep.warnings)]
    return "\n".join(parts)


def write_json(rep: Report, path: Path) -> None:
    path.write_text(json.dumps(asdict(rep), indent=2))


# --- machine facts --------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def count_vllm_processes() -> int:
    """vLLM servers on this machine (any user), from their command lines."""
    count = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if b"vllm.entrypoints" in cmdline.read_bytes():
                count += 1
    return count


def _auth(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def engine_version(engine: Target) -> str:
    try:
        resp = httpx.get(f"{engine.base_url}/version", headers=_auth(engine.api_key), timeout=5)
        return str(resp.json().get("version", "unknown"))
    except (httpx.HTTPError, ValueError):
        return "unknown"


def machine_facts(engine: Target, vllm_before: int | None) -> MachineFacts:
    return MachineFacts(
        cpu_count=os.cpu_count(),
        usable_cpus=len(os.sched_getaffinity(0)),
        cpu_model=_cpu_model(),
        python=platform.python_version(),
        engine_version=engine_version(engine),
        vllm_processes_before=vllm_before,
        load_avg_before=os.getloadavg(),
    )


# --- command line ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.bench_gateway", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--gateway-url", help="A running Tailor; default: start one here.")
    p.add_argument("--engine-url", help="The vLLM server behind it (with --gateway-url).")
    p.add_argument("--api-key", help="A tenant key for the gateway (with --gateway-url).")
    p.add_argument(
        "--engine-key",
        default=os.environ.get("TAILOR_ENGINE_API_KEY") or None,
        help="The engine's key (its vLLM --api-key), sent on direct calls (with --engine-url); "
        "default: TAILOR_ENGINE_API_KEY from the environment.",
    )
    p.add_argument("--model", default=BASE_MODEL, help="Served base model name on both paths.")
    # None means "not given", so --quick can supply its own defaults and flags still win.
    p.add_argument("--concurrency", type=int)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--rounds", type=int, help="Counted rounds per target.")
    p.add_argument("--requests-per-round", type=int)
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--quick", action="store_true", help="Smoke run: concurrency 4, 2 rounds of 8, max_tokens 16.")
    p.add_argument("--json", type=Path, help="Also write the full report (per request) here.")
    p.add_argument("--markdown", action="store_true", help="Print the table as markdown.")
    args = p.parse_args(argv)
    if args.gateway_url and not (args.engine_url and args.api_key):
        p.error("--gateway-url needs --engine-url and --api-key")
    return args


def config_from(args: argparse.Namespace) -> BenchConfig:
    base = QUICK if args.quick else BenchConfig()

    def pick(name: str) -> int:
        value = getattr(args, name)
        return getattr(base, name) if value is None else value

    cfg = BenchConfig(
        concurrency=pick("concurrency"),
        max_tokens=pick("max_tokens"),
        rounds=pick("rounds"),
        requests_per_round=pick("requests_per_round"),
        stream=args.stream,
    )
    if min(cfg.concurrency, cfg.max_tokens, cfg.rounds, cfg.requests_per_round) < 1:
        raise SystemExit("concurrency, max-tokens, rounds and requests-per-round must be >= 1")
    return cfg


def make_targets(
    gateway_url: str, engine_url: str, api_key: str, model: str, engine_key: str | None = None
) -> dict[str, Target]:
    """The engine called directly (with its key, if it has one) and the gateway (a tenant key)."""
    return {
        "direct": Target("direct", engine_url.rstrip("/"), model, engine_key),
        "gateway": Target("gateway", gateway_url.rstrip("/"), model, api_key),
    }


def check_access(target: Target, transport: httpx.BaseTransport | None = None) -> None:
    """Fail before any round when a target refuses its key or does not serve the model."""
    with httpx.Client(
        base_url=target.base_url, headers=_auth(target.api_key), timeout=30, transport=transport
    ) as client:
        try:
            resp = client.get("/v1/models")
        except httpx.HTTPError as exc:
            raise RuntimeError(f"{target.name} at {target.base_url}: {type(exc).__name__}: {exc}") from exc
    if resp.status_code == 401:
        hint = " (--engine-key)" if target.name == "direct" else " (--api-key)"
        state = "a wrong key" if target.api_key else "no key"
        raise RuntimeError(f"{target.name} at {target.base_url} refused {state}: HTTP 401{hint}")
    if resp.status_code != 200:
        raise RuntimeError(f"{target.name} at {target.base_url}: GET /v1/models gave HTTP {resp.status_code}")
    served = {str(m.get("id")) for m in resp.json().get("data") or ()}
    if target.model not in served:
        raise RuntimeError(f"{target.name} at {target.base_url} does not serve {target.model!r} ({sorted(served)})")


def benchmark(
    cfg: BenchConfig,
    gateway_url: str,
    engine_url: str,
    api_key: str,
    model: str,
    vllm_before: int | None,
    engine_key: str | None = None,
) -> Report:
    targets = make_targets(gateway_url, engine_url, api_key, model, engine_key)
    for target in targets.values():
        check_access(target)
    machine = machine_facts(targets["direct"], vllm_before)
    rounds = asyncio.run(run_interleaved(targets, cfg))
    machine.load_avg_after = os.getloadavg()
    return build_report(cfg, model, machine, rounds)


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    # Turn SIGTERM into an exception so the `finally` that stops our Tailor still runs.
    raise SystemExit(143)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config_from(args)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        if args.gateway_url:
            report = benchmark(cfg, args.gateway_url, args.engine_url, args.api_key, args.model, None, args.engine_key)
        else:
            # Counted before our own engine starts: any vLLM here competes with the benchmark.
            vllm_before = count_vllm_processes()
            # The serving path alone: no trainer worker importing torch beside the runs. The engine
            # is started here, with a key we know, so the direct path can call it.
            env = {"TAILOR_RUN_TRAINER": "false"}
            with local_tailor(MODEL_DIR, env_extra=env, engine="operator") as server:
                assert server.engine_url is not None
                key = create_tenant_key(server)
                report = benchmark(cfg, server.url, server.engine_url, key, args.model, vllm_before, server.engine_key)
    except KeyboardInterrupt:
        _progress("interrupted")
        return 130
    except RuntimeError as exc:
        _progress(f"benchmark failed: {exc}")
        return 1
    print(render(report, args.markdown), flush=True)
    if args.json:
        write_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
