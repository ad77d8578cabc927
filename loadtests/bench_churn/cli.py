"""The churn benchmark's command line: adapters built and registered on a throwaway Tailor, `main`."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import loadtests.bench_churn as package
from loadtests.admin_api import admin_client, create_tenant_key, register_adapter
from loadtests.bench_churn.report import render
from loadtests.bench_churn.rounds import ChurnConfig, Run, measure
from loadtests.bench_cli import doc_parser, options_over
from loadtests.launcher import MODEL_DIR, progress
from loadtests.local_server import local_tailor
from loadtests.lora_adapters import build_adapters, uniform_specs
from loadtests.machine import count_vllm_processes, usable_cpus

SEED_BASE = 7000
TENANT = "churn"


def _parser() -> argparse.ArgumentParser:
    p = doc_parser("python -m loadtests.bench_churn", package.__doc__)
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
    cfg = options_over(ChurnConfig(), args)
    cache = args.adapter_cache or Path(tempfile.mkdtemp(prefix="tailor-churn-adapters-"))
    try:
        specs = uniform_specs(cfg.adapters, SEED_BASE)
        paths = build_adapters(specs, cache, MODEL_DIR)
        adapter_mb = (paths[specs[0]] / "adapter_model.safetensors").stat().st_size / 1e6
        run = Run(
            cfg=cfg,
            cpus=usable_cpus(),
            adapter_mb=adapter_mb,
            vllm_before=count_vllm_processes(),
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
            with admin_client(server) as admin:
                for name, spec in zip(names, specs, strict=True):
                    register_adapter(admin, TENANT, name, paths[spec])
            progress(f"registered {len(names)} adapters for tenant {TENANT}")
            asyncio.run(measure(server.url, server.admin_key, key, names, run))
    finally:
        if args.adapter_cache is None:
            shutil.rmtree(cache, ignore_errors=True)
    print(render(run, args.markdown), end="")
    return 0
