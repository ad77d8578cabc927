"""The soak's run: adapters, a fresh tenant, the workers and the sampler for --minutes, `main`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import loadtests.soak as package
from loadtests.admin_api import Gateway, admin_client, create_tenant_key, register_adapter, served_models
from loadtests.bench_cli import doc_parser, exit_on_sigterm, options_over
from loadtests.chat_client import Target, make_client
from loadtests.launcher import MODEL_DIR, progress
from loadtests.local_server import local_tailor
from loadtests.lora_adapters import build_adapters, uniform_specs
from loadtests.machine import usable_cpus
from loadtests.procfs import ProcFS
from loadtests.soak.report import per_request_kib, render, write_csv
from loadtests.soak.samples import Counts, Sample, summarize, take_sample, verdict
from loadtests.soak.traffic import ERROR_SHARE, FEEDBACK_SHARE, MAX_TOKENS, STREAM_SHARE, Action, choose, perform
from loadtests.stats import num

SEED_BASE = 9100  # adapter seeds; other benchmarks use other ranges, so caches never collide


@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 10.0
    concurrency: int = 4
    sample_s: float = 10.0
    adapters: int = 3
    seed: int = 1


async def sampler(
    fs: ProcFS, gateway_pid: int, cfg: SoakConfig, counts: Counts, t0: float, stop: asyncio.Event
) -> list[Sample]:
    """A sample now and every sample_s on the clock (no drift) before the deadline; one more at `stop`."""
    samples: list[Sample] = []
    deadline = t0 + cfg.minutes * 60
    k = 0
    while True:
        batch = await asyncio.to_thread(take_sample, fs, gateway_pid, time.monotonic() - t0, counts)
        samples += batch
        progress(_sample_line(batch))
        if stop.is_set():
            return samples
        k += 1
        tick = t0 + k * cfg.sample_s
        # A tick at the deadline would land among the draining requests, next to the final sample.
        timeout = None if tick >= deadline else max(0.0, tick - time.monotonic())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout)


def _sample_line(batch: Sequence[Sample]) -> str:
    if not batch:
        return "sample: gateway not readable"
    head = batch[0]
    procs = ", ".join(f"{s.process} {s.rss_mib:.0f} MiB/{s.fds} fd" for s in batch)
    return f"t={head.t_s:6.0f} s  done {head.requests_done} failed {head.requests_failed}  {procs}"


async def soak(url: str, key: str, models: list[str], gateway_pid: int, cfg: SoakConfig) -> tuple[list[Sample], Counts]:
    counts = Counts()
    client = make_client(Target("gateway", url, models[0], key), cfg.concurrency)
    try:
        # Every model once, uncounted: adapter loads and first-request costs stay out of the run.
        for model in models:
            warm = Counts()
            await perform(client, Action("chat", model), random.Random(0), warm)
            if warm.failed:
                raise RuntimeError(f"warm-up request to {model} failed: {warm.failures[0]}")
        stop = asyncio.Event()
        t0 = time.monotonic()
        deadline = t0 + cfg.minutes * 60
        sampling = asyncio.create_task(sampler(ProcFS(), gateway_pid, cfg, counts, t0, stop))

        async def worker(i: int) -> None:
            rng = random.Random(cfg.seed * 1000 + i)
            while time.monotonic() < deadline:
                await perform(client, choose(rng, models), rng, counts)

        await asyncio.gather(*(worker(i) for i in range(cfg.concurrency)))
        stop.set()  # after the in-flight requests drained: the last sample sees the idle state
        return await sampling, counts
    finally:
        await client.aclose()


def setup_tenant(url: str, admin_key: str, tenant: str, adapters: Mapping[str, Path]) -> tuple[str, list[str]]:
    """A tenant with a key and the adapters registered; returns the key and the models (base first)."""
    gateway = Gateway(url, admin_key)
    key = create_tenant_key(gateway, tenant)
    with admin_client(gateway) as admin:
        for name, path in adapters.items():
            register_adapter(admin, tenant, name, path)
    # Pinned versions (`name@vN`) are listed too; the soak sends to the names clients use.
    models = [m for m in served_models(url, key) if "@v" not in m]
    progress(f"tenant {tenant}: models {', '.join(models)}")
    return key, models


def build(count: int, cache: Path) -> dict[str, Path]:
    specs = uniform_specs(count, SEED_BASE)
    paths = build_adapters(specs, cache, MODEL_DIR)
    return {f"soak-{i}": paths[s] for i, s in enumerate(specs)}


def run(args: argparse.Namespace, cfg: SoakConfig, adapters: dict[str, Path]) -> tuple[list[Sample], Counts]:
    tenant = "soak-" + secrets.token_hex(3)  # fresh on a long-lived gateway too
    if args.url:
        pid = args.pid or ProcFS().listening_pid(urlsplit(args.url).port or 80)
        if pid is None:
            raise RuntimeError(f"no process of ours listens on {args.url}; pass --pid")
        key, models = setup_tenant(args.url, args.admin_key, tenant, adapters)
        return asyncio.run(soak(args.url, key, models, pid, cfg))
    with local_tailor(MODEL_DIR) as server:
        key, models = setup_tenant(server.url, server.admin_key, tenant, adapters)
        return asyncio.run(soak(server.url, key, models, server.process.pid, cfg))


def _parser() -> argparse.ArgumentParser:
    p = doc_parser("python -m loadtests.soak", package.__doc__)
    p.add_argument("--minutes", type=float, default=10.0, help="how long traffic runs")
    p.add_argument("--concurrency", type=int, default=4, help="closed-loop workers")
    p.add_argument("--sample-s", type=float, default=10.0, help="seconds between /proc samples")
    p.add_argument("--adapters", type=int, default=3, help="LoRA adapters beside the base model")
    p.add_argument("--seed", type=int, default=1, help="seed of the traffic mix")
    p.add_argument("--csv", type=Path, help="write every sample here")
    p.add_argument("--url", help="a running Tailor on this machine (default: start one)")
    p.add_argument("--admin-key", help="its admin key (with --url)")
    p.add_argument("--pid", type=int, help="the gateway's pid (with --url; default: who listens on its port)")
    p.add_argument("--adapter-cache", type=Path, help="reuse built adapters here (default: a temp dir, removed)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.url and not args.admin_key:
        p.error("--url needs --admin-key")
    if args.minutes <= 0 or args.sample_s <= 0 or args.concurrency < 1 or args.adapters < 0:
        p.error("--minutes and --sample-s must be > 0, --concurrency >= 1, --adapters >= 0")
    cfg = options_over(SoakConfig(), args)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    cache = args.adapter_cache or Path(tempfile.mkdtemp(prefix="tailor-soak-adapters-"))
    load_before = os.getloadavg()
    try:
        samples, counts = run(args, cfg, build(cfg.adapters, cache) if cfg.adapters else {})
    except RuntimeError as exc:
        progress(f"soak failed to run: {exc}")
        return 2
    finally:
        if args.adapter_cache is None:
            shutil.rmtree(cache, ignore_errors=True)
    if args.csv:
        write_csv(samples, args.csv)
    summaries = summarize(samples)
    problems = verdict(summaries, counts)
    duration = max((s.t_s for s in samples), default=0.0)
    settings = {
        "run": f"{duration / 60:.1f} min, {cfg.concurrency} workers, a sample every {cfg.sample_s:g} s "
        f"({len({s.t_s for s in samples})} samples); warm-up = first half",
        "mix": f"chat and completions, {STREAM_SHARE:.0%} streamed, base + {cfg.adapters} adapters, "
        f"max_tokens {MAX_TOKENS}, feedback on {FEEDBACK_SHARE:.0%} of answers, {ERROR_SHARE:.0%} deliberate errors",
        "rate": f"{counts.done / duration:.2f} requests/s" if duration else "n/a",
        "gateway RSS slope per request": f"{num(per_request_kib(summaries, samples), 2)} KiB",
        "machine": f"{usable_cpus()} CPUs, 1-min load before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}",
    }
    print(render(summaries, counts, problems, settings), end="", flush=True)
    return 1 if problems else 0
