"""The command line: arguments, the throwaway Tailor or a running one, the access check, `main`."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
from collections.abc import Sequence
from pathlib import Path

import httpx

import loadtests.bench_gateway as package
from loadtests.admin_api import create_tenant_key
from loadtests.bench_cli import bench_parser, options_over, run_and_report
from loadtests.bench_gateway.report import MachineFacts, Report, build_report, render
from loadtests.bench_gateway.rounds import QUICK, BenchConfig, run_interleaved
from loadtests.chat_client import Target, auth
from loadtests.launcher import BASE_MODEL, MODEL_DIR
from loadtests.local_server import local_tailor
from loadtests.machine import count_vllm_processes, cpu_model, usable_cpus


def engine_version(engine: Target) -> str:
    try:
        resp = httpx.get(f"{engine.base_url}/version", headers=auth(engine.api_key), timeout=5)
        return str(resp.json().get("version", "unknown"))
    except (httpx.HTTPError, ValueError):
        return "unknown"


def machine_facts(engine: Target, vllm_before: int | None) -> MachineFacts:
    return MachineFacts(
        cpu_count=os.cpu_count(),
        usable_cpus=usable_cpus(),
        cpu_model=cpu_model(),
        python=platform.python_version(),
        engine_version=engine_version(engine),
        vllm_processes_before=vllm_before,
        load_avg_before=os.getloadavg(),
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = bench_parser("python -m loadtests.bench_gateway", package.__doc__)
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
    cfg = options_over(QUICK if args.quick else BenchConfig(), args)
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
        base_url=target.base_url, headers=auth(target.api_key), timeout=30, transport=transport
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


def _measure(args: argparse.Namespace, cfg: BenchConfig) -> Report:
    if args.gateway_url:
        return benchmark(cfg, args.gateway_url, args.engine_url, args.api_key, args.model, None, args.engine_key)
    # Counted before our own engine starts: any vLLM here competes with the benchmark.
    vllm_before = count_vllm_processes()
    # The serving path alone: no trainer worker importing torch beside the runs. The engine
    # is started here, with a key we know, so the direct path can call it.
    env = {"TAILOR_RUN_TRAINER": "false"}
    with local_tailor(MODEL_DIR, env_extra=env, engine="operator") as server:
        assert server.engine_url is not None
        key = create_tenant_key(server)
        return benchmark(cfg, server.url, server.engine_url, key, args.model, vllm_before, server.engine_key)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config_from(args)
    return run_and_report(lambda: _measure(args, cfg), lambda report: render(report, args.markdown), args.json)
