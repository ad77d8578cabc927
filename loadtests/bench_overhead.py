"""Tailor's own cost per request, against an engine that answers at once.

    python -m loadtests.bench_overhead                        # 1, 2, 20, 64 clients, 5 s each
    python -m loadtests.bench_overhead --clients 1,20 --seconds 3 --env TAILOR_WORKERS=2
    python -m loadtests.bench_overhead --markdown --json overhead.json
    python -m loadtests.bench_overhead --workers 1,2 --clients 2,8,20,64   # one Tailor per value, compared
    python -m loadtests.bench_overhead --litellm /opt/litellm/bin/litellm  # LiteLLM's proxy too

Starts loadtests.mock_engine (health, models, LoRA loads and completions, no model work) and a
throwaway `tailor serve` with it as an operator-run engine, logging on as deployed. For each
number of clients, a closed loop (loadtests.closed_loop, its own process) sends non-streamed
chat completions for `--seconds`, first straight to the engine, then through Tailor, then to
the engine again (ABA: drift falls on both sides). What Tailor adds is the difference between
the two paths: latency added at p50, and its throughput against the direct path's.
The table also shows the CPU the load generator, the gateway and the engine each used during
Tailor's runs, as a share of the machine: on a 2-core machine the three share the cores, so
a gateway that saturates is measured together with what drives it.

With `--workers 1,2` Tailor is started once per TAILOR_WORKERS value, one after the other in
the same run (so both see the same machine), and each gets its table; then the saturation of
each (its highest Tailor req/s over the client counts, and at which count) and their ratio.

With `--litellm EXECUTABLE`, LiteLLM's proxy (loadtests.litellm_proxy) is measured the same way
against the same engine right after Tailor (the first Tailor, with --workers), and gets a table.

Goals (the exit code is 0 whatever the verdict: this measures, it does not test): at most
0.5 ms added at p50 with 1 client, throughput through Tailor at 20 clients at least 0.9x
that at 2 clients, and with --workers, 2 workers' saturation at least 1.6x one worker's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from loadtests.admin_api import create_tenant_key
from loadtests.bench_cli import doc_parser
from loadtests.launcher import MODEL_DIR, ROOT, progress
from loadtests.litellm_proxy import litellm_proxy
from loadtests.local_server import local_tailor

TARGET_ADDED_P50_MS = 0.5  # at 1 client
TARGET_SCALING = 0.9  # rps at 20 clients >= this x rps at 2 clients
TARGET_TWO_WORKERS = 1.6  # saturation with 2 workers >= this x with 1


@dataclass(frozen=True)
class Level:
    clients: int
    direct_rps: float
    direct_p50_ms: float
    tailor_rps: float
    tailor_p50_ms: float
    tailor_p99_ms: float
    tailor_failures: int
    loadgen_cpu: float  # share of the machine's CPUs during Tailor's run
    gateway_cpu: float
    engine_cpu: float

    @property
    def added_p50_ms(self) -> float:
        return self.tailor_p50_ms - self.direct_p50_ms


def _tree(pid: int) -> list[psutil.Process]:
    with_children = psutil.Process(pid)
    return [with_children, *with_children.children(recursive=True)]


def _cpu_seconds(procs: Sequence[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def closed_loop(url: str, key: str, model: str, clients: int, seconds: float) -> dict[str, float]:
    """One loadtests.closed_loop run in its own process; its JSON result."""
    command = [sys.executable, "-m", "loadtests.closed_loop", "--url", url, "--model", model]
    # `--key=`: a random key may begin with "-", which argparse would take for an option.
    command += ["--clients", str(clients), "--seconds", str(seconds), f"--key={key}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def measure(
    *,
    gateway: str,
    gateway_key: str,
    engine: str,
    engine_key: str,
    model: str,
    gateway_pid: int,
    engine_pid: int,
    levels: Sequence[int],
    seconds: float,
) -> Iterator[Level]:
    cpus = psutil.cpu_count() or 1
    for clients in levels:
        progress(f"{clients} clients: direct, through Tailor, direct ...")
        first = closed_loop(engine, engine_key, model, clients, seconds)
        gw_procs, engine_procs = _tree(gateway_pid), _tree(engine_pid)
        gw_before, engine_before = _cpu_seconds(gw_procs), _cpu_seconds(engine_procs)
        through = closed_loop(gateway, gateway_key, model, clients, seconds)
        gw_cpu, engine_cpu = _cpu_seconds(gw_procs) - gw_before, _cpu_seconds(engine_procs) - engine_before
        last = closed_loop(engine, engine_key, model, clients, seconds)
        # Busy time over the whole run, warm-up and process start included: an upper bound.
        wall = seconds + 1.0
        yield Level(
            clients=clients,
            direct_rps=(first["rps"] + last["rps"]) / 2,
            direct_p50_ms=(first["p50_ms"] + last["p50_ms"]) / 2,
            tailor_rps=through["rps"],
            tailor_p50_ms=through["p50_ms"],
            tailor_p99_ms=through["p99_ms"],
            tailor_failures=int(through["failures"]),
            loadgen_cpu=through["cpu_s"] / (seconds * cpus),
            gateway_cpu=gw_cpu / (wall * cpus),
            engine_cpu=engine_cpu / (wall * cpus),
        )


def table(levels: Sequence[Level], proxy: str = "Tailor") -> str:
    """The figures as Markdown; `proxy`: what stood between the load and the engine."""
    head = (
        f"| clients | direct req/s | direct p50 ms | {proxy} req/s | {proxy} p50 ms | {proxy} p99 ms | added p50 ms "
        f"| {proxy}/direct req/s | failed | CPU: load gen / {proxy} / engine |"
    )
    rows = [head, "|" + "---:|" * 9 + "---|"]
    for lv in levels:
        rows.append(
            f"| {lv.clients} | {lv.direct_rps:,.0f} | {lv.direct_p50_ms:.2f} | {lv.tailor_rps:,.0f} | "
            f"{lv.tailor_p50_ms:.2f} | {lv.tailor_p99_ms:.2f} | {lv.added_p50_ms:.2f} | "
            f"{lv.tailor_rps / lv.direct_rps:.2f} | {lv.tailor_failures} | "
            f"{lv.loadgen_cpu:.0%} / {lv.gateway_cpu:.0%} / {lv.engine_cpu:.0%} |"
        )
    return "\n".join(rows)


def verdicts(levels: Sequence[Level]) -> list[str]:
    by = {lv.clients: lv for lv in levels}
    out = []
    if 1 in by:
        added = by[1].added_p50_ms
        ok = "PASS" if added <= TARGET_ADDED_P50_MS else "FAIL"
        out.append(f"added p50 at 1 client: {added:.2f} ms (goal <= {TARGET_ADDED_P50_MS} ms) {ok}")
    if 2 in by and 20 in by:
        ratio = by[20].tailor_rps / by[2].tailor_rps
        ok = "PASS" if ratio >= TARGET_SCALING else "FAIL"
        out.append(f"Tailor req/s at 20 clients / 2 clients: {ratio:.2f} (goal >= {TARGET_SCALING}) {ok}")
    return out


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.startswith("TAILOR_"):
            raise SystemExit(f"--env takes TAILOR_NAME=value, not {pair!r}")
        env[name] = value
    return env


def saturation(levels: Sequence[Level]) -> Level:
    """The client count at which Tailor answered the most requests per second."""
    return max(levels, key=lambda lv: lv.tailor_rps)


def compare_workers(runs: dict[int, list[Level]]) -> list[str]:
    out = []
    for workers, levels in runs.items():
        top = saturation(levels)
        out.append(f"{workers} worker(s): saturates at {top.tailor_rps:,.0f} req/s ({top.clients} clients)")
    if 1 in runs and 2 in runs:
        ratio = saturation(runs[2]).tailor_rps / saturation(runs[1]).tailor_rps
        ok = "PASS" if ratio >= TARGET_TWO_WORKERS else "FAIL"
        out.append(f"2 workers / 1 worker at saturation: {ratio:.2f} (goal >= {TARGET_TWO_WORKERS}) {ok}")
    return out


def run_tailor(
    env: dict[str, str], levels: Sequence[int], seconds: float, litellm: Path | None = None
) -> tuple[list[Level], list[Level] | None]:
    """Start Tailor (mock engine) with `env` and measure every level against it; then, with
    `litellm`, LiteLLM's proxy in front of the same engine."""
    with local_tailor(MODEL_DIR, env_extra=env, engine="mock") as server:
        assert server.engine is not None
        engine = server.engine
        key = create_tenant_key(server, "bench")
        common = {"engine": engine.url, "engine_key": engine.key, "model": MODEL_DIR.name,
                  "engine_pid": engine.process.pid, "levels": levels, "seconds": seconds}  # fmt: skip
        tailor = list(measure(gateway=server.url, gateway_key=key, gateway_pid=server.process.pid, **common))
        if litellm is None:
            return tailor, None
        with litellm_proxy(litellm, engine.url, engine.key, MODEL_DIR.name) as proxy:
            other = list(measure(gateway=proxy.url, gateway_key=proxy.key, gateway_pid=proxy.process.pid, **common))
        return tailor, other


def print_litellm(levels: list[Level] | None) -> None:
    if levels is not None:
        print("\nLiteLLM's proxy, same engine, right after\n")
        print(table(levels, proxy="LiteLLM"))


def main(argv: list[str] | None = None) -> None:
    parser = doc_parser("python -m loadtests.bench_overhead", __doc__)
    parser.add_argument("--clients", default="1,2,20,64", help="comma-separated closed-loop client counts")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run (after 1 s warm-up)")
    parser.add_argument("--env", action="append", default=[], help="TAILOR_NAME=value for the gateway (repeatable)")
    parser.add_argument(
        "--workers", default=None, help="comma-separated TAILOR_WORKERS values: Tailor runs once per value, compared"
    )
    parser.add_argument("--markdown", action="store_true", help="print the table only, as Markdown")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--litellm", type=Path, default=None, help="LiteLLM's `litellm` executable: its proxy is measured too"
    )
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.clients.split(",") if x.strip()]
    env = parse_env(args.env)
    load_before = os.getloadavg()
    if args.workers is None:
        results, litellm = run_tailor(env, levels, args.seconds, args.litellm)
        if not args.markdown:
            print(f"machine: {psutil.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")
        print(table(results))
        for line in verdicts(results):
            print(f"- {line}")
        print_litellm(litellm)
        if args.json:
            args.json.write_text(json.dumps([_figures(r) for r in results], indent=2))
        return
    runs: dict[int, list[Level]] = {}
    litellm = None
    for w in (w.strip() for w in args.workers.split(",") if w.strip()):
        runs[int(w)], other = run_tailor(
            {**env, "TAILOR_WORKERS": w}, levels, args.seconds, args.litellm if not runs else None
        )
        litellm = litellm or other
    if not args.markdown:
        print(
            f"machine: {psutil.cpu_count()} CPUs; load average (1, 5, 15 min) before {_load(load_before)}, "
            f"after {_load(os.getloadavg())}"
        )
    for workers, results in runs.items():
        print(f"\nTAILOR_WORKERS={workers}\n")
        print(table(results))
        for line in verdicts(results):
            print(f"- {line}")
    print_litellm(litellm)
    print()
    for line in compare_workers(runs):
        print(f"- {line}")
    if args.json:
        figures = [{"workers": w, "levels": [_figures(r) for r in results]} for w, results in runs.items()]
        args.json.write_text(json.dumps(figures, indent=2))


def _figures(level: Level) -> dict[str, object]:
    return {**asdict(level), "added_p50_ms": level.added_p50_ms}


def _load(avg: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in avg)


if __name__ == "__main__":
    main()
