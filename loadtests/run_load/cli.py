"""The load test's steps in order (see the package docstring) and its command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from loadtests.launcher import BASE_MODEL, MODEL_DIR, ROOT, progress
from loadtests.local_server import local_tailor
from loadtests.lora_adapters import AdapterSpec, adapter_spec, build_adapters
from loadtests.run_load.locust_process import parse_timespan, run_locust
from loadtests.run_load.metering import fetch_usage, usage_delta
from loadtests.run_load.promoter import Promoter
from loadtests.run_load.report import render
from loadtests.run_load.results import summarize
from loadtests.run_load.tenants import setup_tenants, warm_up

RESULTS = ROOT / "loadtests" / "results"
# Prices per 1K tokens given to the throwaway local Tailor (TAILOR_PRICES) so that metering has
# a cost to report: illustrative figures, adapters dearer than the base model. --prices to change;
# with --url the gateway's own price book applies.
EXAMPLE_PRICES = {
    BASE_MODEL: {"prompt": 0.0005, "completion": 0.0015},
    "adapter": {"prompt": 0.001, "completion": 0.003},
}
# Before and after locust: time for the gateway's interaction log (flushed every 0.5 s) to reach metering.
METER_SETTLE_S = 3.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.run_load",
        description="Headless, bounded locust load on Tailor with a summary (see the module docstring).",
    )
    p.add_argument("--url", help="a running Tailor; default: start a throwaway local one")
    p.add_argument("--admin-key", default=os.environ.get("TAILOR_ADMIN_KEY"), help="with --url")
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--spawn-rate", type=float, default=4)
    p.add_argument("--run-time", default="60s", help="locust timespan: 30s, 2m, 1h")
    p.add_argument("--tenants", type=int, default=3)
    p.add_argument("--adapters-per-tenant", type=int, default=3)
    p.add_argument("--out", type=Path, help="results folder (default loadtests/results/<timestamp>)")
    p.add_argument("--adapter-cache", type=Path, help="where built adapters live (default <out>/adapters)")
    p.add_argument("--max-error-rate", type=float, default=0.01)
    p.add_argument("--stream-share", type=float, default=0.6)
    p.add_argument("--long-share", type=float, default=0.25)
    p.add_argument("--feedback-share", type=float, default=0.3)
    p.add_argument("--zipf-s", type=float, default=1.2)
    p.add_argument("--min-tokens", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--no-warmup", dest="warmup", action="store_false")
    p.add_argument(
        "--prices",
        type=json.loads,
        help="local Tailor only: price book JSON per 1K tokens (TAILOR_PRICES); default: $TAILOR_PRICES, "
        "else example prices",
    )
    p.add_argument("--promote-during-load", action="store_true", help="flip one adapter's version while loading")
    p.add_argument("--promote-interval", type=float, default=2.0, help="seconds between version switches")
    p.add_argument("locust_args", nargs="*", help="after --: extra arguments for locust")
    return p


@contextlib.contextmanager
def _target(args: argparse.Namespace) -> Iterator[tuple[str, str, str]]:
    """(url, admin key, description): the given Tailor, or a throwaway local one."""
    if args.url:
        if not args.admin_key:
            raise SystemExit("--url needs --admin-key (or TAILOR_ADMIN_KEY)")
        yield args.url.rstrip("/"), args.admin_key, f"{args.url} (given)"
        return
    if args.prices is not None:
        os.environ["TAILOR_PRICES"] = json.dumps(args.prices)
    else:
        os.environ.setdefault("TAILOR_PRICES", json.dumps(EXAMPLE_PRICES))
    with local_tailor(MODEL_DIR) as server:
        yield server.url, server.admin_key, f"throwaway local Tailor {server.url} ({BASE_MODEL}, {os.cpu_count()} CPUs)"


@dataclass
class LoadResult:
    metering: dict[str, Any] | None
    metering_note: str
    promoter: Promoter | None
    promoted: str | None
    version_stats: list[dict[str, Any]] | None = None


def _load(
    args: argparse.Namespace,
    url: str,
    admin_key: str,
    out: Path,
    paths: dict[AdapterSpec, Path],
    second: AdapterSpec | None,
    config: dict[str, Any],
    run_tag: str,
) -> LoadResult:
    """Set up tenants and adapters on `url`, warm up, run locust (and the promoter), meter."""
    headers = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as admin:
        tenants = setup_tenants(
            admin,
            tenants=args.tenants,
            adapters_per_tenant=args.adapters_per_tenant,
            paths=paths,
            url=url,
            run_tag=run_tag,
            promote_second=paths[second] if second else None,
        )
        tenants_file = out / "tenants.json"
        tenants_file.write_text(json.dumps([asdict(t) for t in tenants], indent=2))
        if args.warmup:
            warm_up(url, tenants)

        first_day = datetime.now(timezone.utc).date().isoformat()
        time.sleep(METER_SETTLE_S)  # the warm-up's interaction records reach metering first
        # A shared gateway: only our tenants' usage; a throwaway one: everything (the brief's query).
        ours = [t.tenant for t in tenants] if args.url else []
        usage_before, note = fetch_usage(admin, first_day, first_day, ours)

        records = out / "records.jsonl"
        records.unlink(missing_ok=True)
        env = {
            **os.environ,
            "TAILOR_LOAD_TENANTS": str(tenants_file),
            "TAILOR_LOAD_RECORDS": str(records),
            "TAILOR_LOAD_STREAM_SHARE": str(args.stream_share),
            "TAILOR_LOAD_LONG_SHARE": str(args.long_share),
            "TAILOR_LOAD_FEEDBACK_SHARE": str(args.feedback_share),
            "TAILOR_LOAD_ZIPF_S": str(args.zipf_s),
            "TAILOR_LOAD_MIN_TOKENS": str(args.min_tokens),
            "TAILOR_LOAD_MAX_TOKENS": str(args.max_tokens),
        }
        promoter = promoted = None
        if args.promote_during_load:
            promoted = tenants[0].models[0]
            config["promote_tenant"] = tenants[0].tenant
            promoter = Promoter(url, admin_key, tenants[0].tenant, promoted, args.promote_interval)
            promoter.start()
        try:
            rc = run_locust(args, url, out, env, args.locust_args)
        finally:
            if promoter is not None:
                promoter.stop_event.set()
                promoter.join(timeout=60)
        if not (out / "locust_stats.csv").exists():
            progress((out / "locust.log").read_text(errors="replace")[-3000:])
            raise SystemExit(f"locust exited with {rc} and wrote no stats")

        metering = None
        if usage_before is not None:
            time.sleep(METER_SETTLE_S)
            last_day = datetime.now(timezone.utc).date().isoformat()
            # The whole run's days after, the first day before: the difference is the run.
            usage_after, note = fetch_usage(admin, first_day, last_day, ours)
            if usage_after is not None:
                metering = usage_delta(usage_before, usage_after)
                if metering["totals"]["requests"] <= 0:
                    metering, note = None, "metering reported no requests for this run"
        version_stats = None
        if promoted:
            # What each version of the flipped adapter served (all time: warm-up included).
            time.sleep(0 if usage_before is not None else METER_SETTLE_S)
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                r = httpx.get(
                    f"{url}/v1/adapters/{promoted}/stats",
                    headers={"Authorization": f"Bearer {tenants[0].key}"},
                    timeout=30,
                )
                if r.status_code == 200:
                    version_stats = list(r.json()["data"])
    return LoadResult(metering, note, promoter, promoted, version_stats)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.users < 1 or args.tenants < 1 or args.adapters_per_tenant < 0:
        raise SystemExit("--users and --tenants must be >= 1, --adapters-per-tenant >= 0")
    if args.promote_during_load and args.adapters_per_tenant < 1:
        raise SystemExit("--promote-during-load needs at least one adapter per tenant")
    parse_timespan(args.run_time)  # fail early on a bad timespan
    now = datetime.now()
    stamp = now.strftime("%Y%m%d-%H%M%S")
    out: Path = (args.out or RESULTS / stamp).resolve()
    out.mkdir(parents=True, exist_ok=True)
    run_tag = now.strftime("%H%M%S") + secrets.token_hex(2)

    specs = [adapter_spec(i) for i in range(args.tenants * args.adapters_per_tenant)]
    second = adapter_spec(len(specs)) if args.promote_during_load else None
    paths = build_adapters([*specs, *([second] if second else [])], args.adapter_cache or out / "adapters", MODEL_DIR)

    config: dict[str, Any] = {
        k: getattr(args, k)
        for k in (
            "users",
            "spawn_rate",
            "run_time",
            "tenants",
            "adapters_per_tenant",
            "stream_share",
            "long_share",
            "feedback_share",
            "zipf_s",
            "min_tokens",
            "max_tokens",
            "warmup",
            "promote_during_load",
        )
    }
    with _target(args) as (url, admin_key, target):
        config["prices"] = "the gateway's own price book" if args.url else json.loads(os.environ["TAILOR_PRICES"])
        result = _load(args, url, admin_key, out, paths, second, config, run_tag)

    summary = summarize(
        out,
        started_at=now.strftime("%Y-%m-%d %H:%M:%S"),
        target=target,
        config=config,
        max_error_rate=args.max_error_rate,
        metering=result.metering,
        metering_note=result.metering_note,
        promoter=result.promoter,
        promoted=result.promoted,
        version_stats=result.version_stats,
    )
    text = render(summary)
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(asdict(summary), indent=2, default=str))
    print(text)
    progress(f"results in {out}")
    return 0 if summary.passed else 1
