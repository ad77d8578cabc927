"""The command line: arguments, the throwaway Tailor (or a running one), `main`."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

import httpx

import loadtests.bench_batch_priority as package
from loadtests.admin_api import create_tenant_key
from loadtests.bench_batch_priority.report import Report, build_report, render
from loadtests.bench_batch_priority.rounds import RoundResult, run_rounds
from loadtests.bench_batch_priority.workload import QUICK, BenchConfig
from loadtests.bench_cli import bench_parser, options_over, run_and_report
from loadtests.launcher import BASE_MODEL, MODEL_DIR
from loadtests.local_server import local_tailor
from loadtests.machine import count_vllm_processes, usable_cpus


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = bench_parser("python -m loadtests.bench_batch_priority", package.__doc__)
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
    return options_over(QUICK if args.quick else BenchConfig(), args)


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
    cpus = usable_cpus()
    return build_report(cfg, model, rounds, load_before, os.getloadavg(), vllm_before, cpus)


def _measure(args: argparse.Namespace, cfg: BenchConfig) -> Report:
    if args.gateway_url:
        return benchmark(cfg, args.gateway_url, args.api_key, args.model, None)
    vllm_before = count_vllm_processes()  # before our own: any other competes with the run
    with local_tailor(MODEL_DIR, env_extra=gateway_env(args.busy)) as server:
        key = create_tenant_key(server)
        return benchmark(cfg, server.url, key, args.model, vllm_before)


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config_from(args)
    return run_and_report(lambda: _measure(args, cfg), render, args.json, on_sigterm=_exit_on_sigterm)
