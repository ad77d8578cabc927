"""Realistic load on Tailor with locust, in one bounded headless command, with a summary.

    python -m loadtests.run_load                                   # throwaway local Tailor, 8 users, 60 s
    python -m loadtests.run_load --users 4 --run-time 30s --promote-during-load
    python -m loadtests.run_load --url http://127.0.0.1:8000 --admin-key adm-...   # a running Tailor
    python -m loadtests.run_load --run-time 2m -- --stream-share 0.9 --zipf-s 1.5  # after --: to locust

Steps:

1. builds small random PEFT LoRA adapters for the base model (rank 4 or 8 on a few attention
   or MLP projections, `init_lora_weights=False` so every one differs), cached under
   <out>/adapters (pass the same --out, or --adapter-cache, to reuse them);
2. without --url starts a throwaway Tailor (`loadtests.local_server`), stopped at the end;
3. creates --tenants tenants with one key each through the admin API and registers
   --adapters-per-tenant adapters per tenant by path (`POST /admin/tenants/{t}/adapters/register`;
   the gateway reads the directory, so with --url it must run on this host); writes
   <out>/tenants.json for the locustfile: each tenant's models in popularity order (first
   adapter, the base model, then the long tail);
4. warms every (tenant, model) pair with one 1-token request (--no-warmup to skip), so the
   first adapter loads and the engine's warm-up are not in the figures;
5. runs `python -m locust -f loadtests/locustfile.py --headless ... --csv <out>/locust` as a
   subprocess for --run-time; with --promote-during-load a thread meanwhile flips one
   tenant's hottest adapter between two versions (`/activate` and `/rollback`);
6. writes <out>/summary.md (and summary.json) and prints it: request and token throughput,
   latency percentiles for streamed and plain chat, TTFT and TPOT, error rate, cost per 1K
   requests from the metering endpoint (`GET /admin/usage`, read before and after the run and
   subtracted; n/a where the gateway has no such route), and the promotion switches.

Exit status 1 when the error rate exceeds --max-error-rate (or a setup step fails), else 0.
Traffic goes only to the local Tailor on 127.0.0.1 or to the --url given.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from loadtests.local_server import BASE_MODEL, MODEL_DIR, ROOT, _progress, local_tailor

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
RESULTS = ROOT / "loadtests" / "results"

# Names given to the adapters of every tenant, most popular first (then adapter-<i>).
ADAPTER_NAMES = ("support", "billing", "legal", "sales", "triage", "summarize", "translate", "search")
# (rank, target modules) cycled over the adapters: small, but not all alike.
ADAPTER_SHAPES = (
    (8, ("q_proj", "v_proj")),
    (4, ("q_proj", "k_proj", "v_proj", "o_proj")),
    (8, ("gate_proj", "up_proj", "down_proj")),
    (4, ("q_proj", "v_proj", "down_proj")),
)
# Random LoRA B matrices at nn.Linear's default init move the base model a lot; scale them
# down so adapted models still write text (the engine's work does not depend on it).
LORA_B_SCALE = 0.3
# Prices per 1K tokens given to the throwaway local Tailor (TAILOR_PRICES) so that metering has
# a cost to report: illustrative figures, adapters dearer than the base model. --prices to change;
# with --url the gateway's own price book applies.
EXAMPLE_PRICES = {
    BASE_MODEL: {"prompt": 0.0005, "completion": 0.0015},
    "adapter": {"prompt": 0.001, "completion": 0.003},
}
# Before and after locust: time for the gateway's interaction log (flushed every 0.5 s) to reach metering.
METER_SETTLE_S = 3.0
# Beyond --run-time: locust start-up and shutdown; the subprocess is killed after this.
LOCUST_GRACE_S = 120.0


# --- adapters --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdapterSpec:
    rank: int
    targets: tuple[str, ...]
    seed: int

    @property
    def dirname(self) -> str:
        short = "".join(t[0] for t in self.targets)  # q_proj,v_proj -> qv ; gate,up,down -> gud
        return f"r{self.rank}-{short}-s{self.seed}"


def adapter_spec(index: int) -> AdapterSpec:
    rank, targets = ADAPTER_SHAPES[index % len(ADAPTER_SHAPES)]
    return AdapterSpec(rank=rank, targets=targets, seed=1000 + index)


def build_adapters(specs: Sequence[AdapterSpec], cache: Path, model_dir: Path) -> dict[AdapterSpec, Path]:
    """PEFT LoRA directories for `specs`, built once per cache directory."""
    paths = {s: cache / s.dirname for s in specs}
    missing = [s for s in specs if not (paths[s] / "adapter_model.safetensors").exists()]
    if not missing:
        _progress(f"adapters: {len(specs)} cached in {cache}")
        return paths
    _progress(f"adapters: building {len(missing)} random LoRA adapters in {cache} ...")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    started = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    for spec in missing:
        torch.manual_seed(spec.seed)
        config = LoraConfig(
            r=spec.rank, lora_alpha=spec.rank, target_modules=list(spec.targets), init_lora_weights=False
        )
        peft_model = get_peft_model(model, config)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.mul_(LORA_B_SCALE)
        tmp = paths[spec].with_name(paths[spec].name + ".tmp")
        peft_model.save_pretrained(tmp)
        tmp.rename(paths[spec])  # complete or absent: an interrupted build is redone
        model = peft_model.unload()  # the base model again, without LoRA layers
    _progress(f"adapters: built in {time.monotonic() - started:.0f} s")
    return paths


# --- setup through the admin API -------------------------------------------------------------


@dataclass
class TenantSetup:
    tenant: str
    key: str
    models: list[str]  # popularity order, as the locustfile draws them
    base_model: str


def _check(r: httpx.Response, what: str, expect: int = 201) -> dict[str, Any]:
    if r.status_code != expect:
        raise RuntimeError(f"{what} failed: HTTP {r.status_code} {r.text[:500]}")
    return r.json()


def setup_tenants(
    admin: httpx.Client,
    *,
    tenants: int,
    adapters_per_tenant: int,
    paths: dict[AdapterSpec, Path],
    url: str,
    run_tag: str,
    promote_second: Path | None,
) -> list[TenantSetup]:
    out = []
    index = 0
    base_model = ""
    for t in range(tenants):
        name = f"load-{run_tag}-{t}"
        _check(admin.post("/admin/tenants", json={"name": name}), f"creating tenant {name}")
        key = _check(admin.post(f"/admin/tenants/{name}/keys", json={"name": "locust"}), f"key for {name}")["key"]
        if not base_model:  # the base model's public name: /v1/models lists it first
            r = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
            base_model = str(_check(r, "GET /v1/models", expect=200)["data"][0]["id"])
        adapters = []
        for a in range(adapters_per_tenant):
            adapter = ADAPTER_NAMES[a] if a < len(ADAPTER_NAMES) else f"adapter-{a}"
            path = paths[adapter_spec(index)]
            index += 1
            body = {"name": adapter, "path": str(path), "activate": True}
            _check(admin.post(f"/admin/tenants/{name}/adapters/register", json=body), f"registering {name}/{adapter}")
            adapters.append(adapter)
        if promote_second is not None and t == 0 and adapters:
            body = {"name": adapters[0], "path": str(promote_second), "activate": True}
            info = _check(admin.post(f"/admin/tenants/{name}/adapters/register", json=body), "second version")
            _progress(f"{name}/{adapters[0]}: versions {[v['version'] for v in info['versions']]}")
        # Popularity: the tenant's main adapter, then the base model, then the long tail.
        models = [*adapters[:1], base_model, *adapters[1:]]
        out.append(TenantSetup(tenant=name, key=key, models=models, base_model=base_model))
    _progress(f"setup: {tenants} tenants, {adapters_per_tenant} adapters each")
    return out


def warm_up(url: str, tenants: Sequence[TenantSetup], timeout_s: float = 300.0) -> None:
    """One 1-token request per (tenant, model): first adapter loads happen here, not in the run."""
    started = time.monotonic()
    with httpx.Client(base_url=url, timeout=timeout_s) as client:
        for t in tenants:
            for model in t.models:
                r = client.post(
                    "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {t.key}"},
                    json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
                )
                if r.status_code != 200:
                    raise RuntimeError(f"warm-up {t.tenant}/{model}: HTTP {r.status_code} {r.text[:300]}")
    _progress(f"warm-up: {sum(len(t.models) for t in tenants)} requests in {time.monotonic() - started:.0f} s")


# --- metering --------------------------------------------------------------------------------


def fetch_usage(
    admin: httpx.Client, since: str, until: str, tenants: Sequence[str] = ()
) -> tuple[dict[str, Any] | None, str]:
    """The metering endpoint's rows for the days `since`..`until`, or None and why not.

    With `tenants`: only theirs (one query each, `tenant=`), for gateways others use too.
    """
    rows: list[dict[str, Any]] = []
    for tenant in tenants or [None]:
        params = {"since": since, "until": until, "group_by": "model", "format": "json"}
        if tenant:
            params["tenant"] = tenant
        try:
            r = admin.get("/admin/usage", params=params, timeout=30)
        except httpx.HTTPError as exc:
            return None, f"GET /admin/usage failed: {exc}"
        if r.status_code == 404 and not tenant:
            return None, "GET /admin/usage: 404 (no metering route on this gateway)"
        if r.status_code != 200:
            return None, f"GET /admin/usage: HTTP {r.status_code} {r.text[:200]}"
        try:
            rows += list(r.json()["data"])
        except (ValueError, KeyError, TypeError) as exc:
            return None, f"GET /admin/usage: unexpected body ({exc})"
    return {"data": rows}, ""


_METER_FIELDS = ("requests", "errors", "client_closed", "prompt_tokens", "completion_tokens", "cost")


def _num(value: Any) -> float:
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


def usage_delta(before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, Any]:
    """What the run added: per model and in total (after - before, both for the same day)."""

    def rows(body: dict[str, Any] | None) -> dict[str, dict[str, float]]:
        table: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(_METER_FIELDS, 0.0))
        for row in (body or {}).get("data") or []:
            for f in _METER_FIELDS:
                table[str(row.get("model"))][f] += _num(row.get(f))
        return table

    b, a = rows(before), rows(after)
    per_model = {}
    for model, values in a.items():
        d = {f: values[f] - b.get(model, dict.fromkeys(_METER_FIELDS, 0.0))[f] for f in _METER_FIELDS}
        if d["requests"] > 0:
            per_model[model] = d
    totals = {f: sum(d[f] for d in per_model.values()) for f in _METER_FIELDS}
    return {"per_model": per_model, "totals": totals}


# --- promotion during load -------------------------------------------------------------------


@dataclass
class Switch:
    t: float  # seconds since the load started
    action: str  # "activate v2" or "rollback"
    status: int
    ms: float
    active_after: int | None
    error: str = ""


class Promoter(threading.Thread):
    """Flips `tenant`'s adapter `name` between its two versions until stopped."""

    def __init__(self, url: str, admin_key: str, tenant: str, name: str, interval_s: float) -> None:
        super().__init__(name="promoter", daemon=True)
        self.url, self.admin_key, self.tenant, self.name = url, admin_key, tenant, name
        self.interval_s = interval_s
        self.stop_event = threading.Event()
        self.switches: list[Switch] = []

    def run(self) -> None:
        started = time.monotonic()
        base = f"/admin/tenants/{self.tenant}/adapters/{self.name}"
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        active: int | None = 2  # the second registration is active at the start
        with httpx.Client(base_url=self.url, headers=headers, timeout=30) as admin:
            while not self.stop_event.wait(self.interval_s):
                # v2 -> rollback -> v1 -> activate v2 -> v2 ... (rollback marks v2 rolled_back;
                # activating it again makes v1 the earlier version to roll back to).
                if active == 2:
                    action, path, body = "rollback", f"{base}/rollback", None
                else:
                    action, path, body = "activate v2", f"{base}/activate", {"version": 2}
                t0 = time.perf_counter()
                try:
                    r = admin.post(path, json=body)
                    ms = (time.perf_counter() - t0) * 1000
                    after = r.json().get("active_version") if r.status_code == 200 else None
                    error = "" if r.status_code == 200 else r.text[:200]
                    status = r.status_code
                except (httpx.HTTPError, ValueError) as exc:
                    ms, after, error, status = (time.perf_counter() - t0) * 1000, None, str(exc), 0
                self.switches.append(Switch(time.monotonic() - started, action, status, ms, after, error))
                if after is not None:
                    active = after
                else:
                    # Unknown state: ask, so the next switch is the right one.
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        active = admin.get(base).json().get("active_version")


# --- locust ----------------------------------------------------------------------------------


_TIMESPAN = re.compile(r"(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?")


def parse_timespan(text: str) -> float:
    """Locust's --run-time syntax ("90", "30s", "5m", "1h30m"). Parsed here, not by importing
    locust: its import monkey-patches this whole process with gevent."""
    text = text.strip()
    if text.isdigit():
        return float(text)
    match = _TIMESPAN.fullmatch(text)
    if not text or match is None or not any(match.groups()):
        raise SystemExit(f"invalid --run-time {text!r}: use seconds or a span such as 30s, 5m or 1h30m")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


def run_locust(args: argparse.Namespace, url: str, out: Path, env: dict[str, str], extra: Sequence[str]) -> int:
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        str(args.users),
        "-r",
        str(args.spawn_rate),
        "-t",
        args.run_time,
        "--host",
        url,
        "--csv",
        str(out / "locust"),
        "--html",
        str(out / "locust.html"),
        "--only-summary",
        "--loglevel",
        "WARNING",
        *extra,
    ]
    limit = parse_timespan(args.run_time) + LOCUST_GRACE_S
    _progress(f"locust: {args.users} users (spawn {args.spawn_rate}/s) for {args.run_time} against {url} ...")
    with (out / "locust.log").open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            return proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            _progress(f"locust still running {limit:.0f} s after start: stopping it")
            return -1
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


# --- results ---------------------------------------------------------------------------------


@dataclass
class StatRow:
    type: str
    name: str
    requests: int
    failures: int
    median: float | None
    mean: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    rps: float


def _float(value: str | None) -> float | None:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def read_stats(path: Path) -> list[StatRow]:
    rows = []
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            if r.get("Name") == "Aggregated":
                continue
            rows.append(
                StatRow(
                    type=r["Type"],
                    name=r["Name"],
                    requests=int(r["Request Count"]),
                    failures=int(r["Failure Count"]),
                    median=_float(r.get("Median Response Time")),
                    mean=_float(r.get("Average Response Time")),
                    p50=_float(r.get("50%")),
                    p95=_float(r.get("95%")),
                    p99=_float(r.get("99%")),
                    rps=_float(r.get("Requests/s")) or 0.0,
                )
            )
    return rows


def read_failures(path: Path) -> list[tuple[str, str, int]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [(r["Name"], r["Error"], int(r["Occurrences"])) for r in csv.DictReader(f)]


def read_records(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    records, meta = [], {}
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if rec.get("kind") == "meta":
                    meta[rec["event"]] = rec
                else:
                    records.append(rec)
    return records, meta


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


@dataclass
class Summary:
    started_at: str
    target: str
    config: dict[str, Any]
    duration_s: float
    chat_requests: int
    chat_failures: int
    feedback_requests: int
    feedback_failures: int
    interrupted: int
    chat_rps: float
    total_rps: float
    completion_tokens: int
    prompt_tokens: int
    completion_tokens_per_s: float
    error_rate: float
    max_error_rate: float
    latency: dict[str, dict[str, float | int | None]]
    per_model: dict[str, dict[str, Any]]
    failures: list[tuple[str, str, int]]
    metering: dict[str, Any] | None
    metering_note: str
    cost_per_1k_requests: float | None
    promotion: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.error_rate <= self.max_error_rate


def summarize(
    out: Path,
    *,
    started_at: str,
    target: str,
    config: dict[str, Any],
    max_error_rate: float,
    metering: dict[str, Any] | None,
    metering_note: str,
    promoter: Promoter | None,
    promoted: str | None,
    version_stats: list[dict[str, Any]] | None = None,
) -> Summary:
    stats = read_stats(out / "locust_stats.csv")
    records, meta = read_records(out / "records.jsonl")
    chat_rows = [s for s in stats if s.name in ("chat", "chat stream") and s.type == "POST"]
    feedback_rows = [s for s in stats if s.name == "feedback"]
    chat_requests = sum(s.requests for s in chat_rows)
    chat_failures = sum(s.failures for s in chat_rows)
    fb_requests = sum(s.requests for s in feedback_rows)
    fb_failures = sum(s.failures for s in feedback_rows)
    total = chat_requests + fb_requests
    duration = 0.0
    if "start" in meta and "stop" in meta:
        duration = meta["stop"]["t"] - meta["start"]["t"]
    duration = duration or parse_timespan(config["run_time"])
    chats = [r for r in records if r.get("kind") == "chat"]
    completion = sum(int(r.get("completion_tokens") or 0) for r in chats if r.get("ok"))
    prompt = sum(int(r.get("prompt_tokens") or 0) for r in chats if r.get("ok"))

    latency: dict[str, dict[str, float | int | None]] = {}
    for s in stats:
        label = {"POST": "latency"}.get(s.type, s.type)
        latency[f"{label}: {s.name}"] = {
            "requests": s.requests,
            "failures": s.failures,
            "p50": s.p50,
            "p95": s.p95,
            "p99": s.p99,
            "mean": s.mean,
        }

    per_model: dict[str, dict[str, Any]] = {}
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in chats:
        by_model[r["model"]].append(r)
    for model, rs in sorted(by_model.items(), key=lambda kv: -len(kv[1])):
        ok = [r for r in rs if r.get("ok")]
        lat = [r["latency_ms"] for r in ok if "latency_ms" in r]
        ttft = [r["ttft_ms"] for r in ok if "ttft_ms" in r]
        tpot = [r["tpot_ms"] for r in ok if "tpot_ms" in r]
        per_model[model] = {
            "base": bool(rs[0].get("base")),
            "requests": len(rs),
            "failures": len(rs) - len(ok),
            "completion_tokens": sum(int(r.get("completion_tokens") or 0) for r in ok),
            "p50_latency_ms": _pct(lat, 0.5),
            "p50_ttft_ms": _pct(ttft, 0.5),
            "p50_tpot_ms": _pct(tpot, 0.5),
        }

    cost_per_1k = None
    if metering is not None:
        t = metering["totals"]
        if t["requests"] > 0:
            cost_per_1k = t["cost"] / t["requests"] * 1000

    promotion = None
    if promoter is not None:
        switches = promoter.switches
        promo_records = [r for r in chats if r.get("model") == promoted and r.get("tenant") == config["promote_tenant"]]
        promotion = {
            "tenant": config["promote_tenant"],
            "adapter": promoted,
            "interval_s": promoter.interval_s,
            "switches_ok": sum(1 for s in switches if s.status == 200),
            "switches_failed": sum(1 for s in switches if s.status != 200),
            "switches": [asdict(s) for s in switches],
            "requests_to_adapter": len(promo_records),
            "failed_requests_to_adapter": sum(1 for r in promo_records if not r.get("ok")),
            "failed_requests_all": chat_failures + fb_failures,
            "version_stats": version_stats,
        }

    return Summary(
        started_at=started_at,
        target=target,
        config=config,
        duration_s=duration,
        chat_requests=chat_requests,
        chat_failures=chat_failures,
        feedback_requests=fb_requests,
        feedback_failures=fb_failures,
        interrupted=int(meta.get("stop", {}).get("interrupted", 0)),
        chat_rps=chat_requests / duration if duration else 0.0,
        total_rps=total / duration if duration else 0.0,
        completion_tokens=completion,
        prompt_tokens=prompt,
        completion_tokens_per_s=completion / duration if duration else 0.0,
        error_rate=(chat_failures + fb_failures) / total if total else 1.0,
        max_error_rate=max_error_rate,
        latency=latency,
        per_model=per_model,
        failures=read_failures(out / "locust_failures.csv"),
        metering=metering,
        metering_note=metering_note,
        cost_per_1k_requests=cost_per_1k,
        promotion=promotion,
    )


def _ms(x: float | int | None) -> str:
    return "–" if x is None else f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def render(s: Summary) -> str:
    c = s.config
    lines = [
        f"# Tailor load test, {s.started_at}",
        "",
        f"- target: {s.target}",
        f"- scenario: {c['users']} users (spawn {c['spawn_rate']}/s) for {c['run_time']}; {c['tenants']} tenants "
        f"x {c['adapters_per_tenant']} adapters + base model, Zipf-like popularity; "
        f"stream {c['stream_share']:.0%}, long prompts {c['long_share']:.0%}, feedback {c['feedback_share']:.0%} "
        f"of answers; max_tokens {c['min_tokens']}-{c['max_tokens']}"
        + ("; **promotion flips during load**" if s.promotion else ""),
        f"- measured for {s.duration_s:.1f} s (locust start to stop); warm-up {'done' if c['warmup'] else 'skipped'}",
        "",
        "## Throughput",
        "",
        "| metric | value |",
        "|---|---:|",
        f"| chat requests/s (completed) | {s.chat_rps:.2f} |",
        f"| all requests/s (chat + feedback) | {s.total_rps:.2f} |",
        f"| completion tokens/s | {s.completion_tokens_per_s:.1f} |",
        f"| prompt tokens/s | {s.prompt_tokens / s.duration_s if s.duration_s else 0:.1f} |",
        f"| chat requests (failed) | {s.chat_requests} ({s.chat_failures}) |",
        f"| feedback posts (failed) | {s.feedback_requests} ({s.feedback_failures}) |",
        f"| cut off by the run time (not counted) | {s.interrupted} |",
        "",
        "## Latency (ms, locust CSV percentiles)",
        "",
        "| entry | requests | failures | p50 | p95 | p99 | mean |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    order = ["latency: chat", "latency: chat stream", "TTFT: chat stream", "TPOT: chat stream", "latency: feedback"]
    for key in [*order, *(k for k in s.latency if k not in order)]:
        if key in s.latency:
            v = s.latency[key]
            lines.append(
                f"| {key} | {v['requests']} | {v['failures']} | {_ms(v['p50'])} | {_ms(v['p95'])} | "
                f"{_ms(v['p99'])} | {_ms(v['mean'])} |"
            )
    lines += [
        "",
        "TTFT: time to the first content token of a stream; TPOT: (latency - TTFT) / (completion tokens - 1).",
        "",
        "## By model (locust-side records, all tenants)",
        "",
        "| model | kind | requests | failures | completion tokens | p50 latency | p50 TTFT | p50 TPOT |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model, m in s.per_model.items():
        lines.append(
            f"| {model} | {'base' if m['base'] else 'adapter'} | {m['requests']} | {m['failures']} | "
            f"{m['completion_tokens']} | {_ms(m['p50_latency_ms'])} | {_ms(m['p50_ttft_ms'])} | "
            f"{_ms(m['p50_tpot_ms'])} |"
        )
    verdict = "PASS" if s.passed else "FAIL"
    lines += [
        "",
        "## Errors",
        "",
        f"error rate {s.error_rate:.2%} (threshold {s.max_error_rate:.2%}): **{verdict}**",
    ]
    if s.failures:
        lines += ["", "| entry | error | count |", "|---|---|---:|"]
        for name, error, n in sorted(s.failures, key=lambda f: -f[2])[:10]:
            lines.append(f"| {name} | {error[:160].replace('|', '/')} | {n} |")
    lines += ["", "## Cost", ""]
    if s.metering is not None:
        t = s.metering["totals"]
        cost = "n/a" if s.cost_per_1k_requests is None else f"{s.cost_per_1k_requests:.4f}"
        lines += [
            "From the metering endpoint (`GET /admin/usage`, this run's share: after minus before); "
            + (
                f"prices per 1K tokens: `{json.dumps(c['prices'])}`."
                if isinstance(c.get("prices"), dict)
                else f"prices: {c.get('prices')}."
            ),
            "Client closed: requests cut off by the run time.",
            "",
            "| model | requests | errors | client closed | prompt tokens | completion tokens | cost |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for model, d in sorted(s.metering["per_model"].items(), key=lambda kv: -kv[1]["requests"]):
            lines.append(
                f"| {model} | {d['requests']:.0f} | {d['errors']:.0f} | {d['client_closed']:.0f} "
                f"| {d['prompt_tokens']:.0f} | {d['completion_tokens']:.0f} | {d['cost']:.6f} |"
            )
        lines += [
            f"| **total** | {t['requests']:.0f} | {t['errors']:.0f} | {t['client_closed']:.0f} "
            f"| {t['prompt_tokens']:.0f} | {t['completion_tokens']:.0f} | {t['cost']:.6f} |",
            "",
            f"**cost per 1K requests: {cost}**",
        ]
    else:
        lines += [
            f"cost per 1K requests: **n/a** ({s.metering_note})",
            "",
            f"locust-side usage instead: {s.prompt_tokens} prompt + {s.completion_tokens} completion tokens over "
            f"{s.chat_requests - s.chat_failures} answered chat requests"
            + (
                f" ({(s.prompt_tokens + s.completion_tokens) / (s.chat_requests - s.chat_failures):.0f} per request)"
                if s.chat_requests > s.chat_failures
                else ""
            ),
        ]
    if s.promotion:
        p = s.promotion
        actions = Counter(sw["action"] for sw in p["switches"] if sw["status"] == 200)
        lines += [
            "",
            "## Promotion during load",
            "",
            f"`{p['tenant']}/{p['adapter']}` flipped between versions 1 and 2 every {p['interval_s']:g} s "
            '(`POST .../rollback`, `POST .../activate {"version": 2}`).',
            "",
            "| metric | value |",
            "|---|---:|",
            f"| switches done | {p['switches_ok']} ({', '.join(f'{n} {a}' for a, n in actions.items()) or 'none'}) |",
            f"| switches failed | {p['switches_failed']} |",
            f"| switch call p50 / max (ms) | {_ms(_pct([sw['ms'] for sw in p['switches']], 0.5))} / "
            f"{_ms(max((sw['ms'] for sw in p['switches']), default=None))} |",
            f"| requests to the flipped adapter (failed) | {p['requests_to_adapter']} "
            f"({p['failed_requests_to_adapter']}) |",
            f"| failed requests during the run, all (target 0) | {p['failed_requests_all']} |",
        ]
        if p.get("version_stats"):
            served = ", ".join(f"v{v['version']}: {v['requests']} ({v['errors']} errors)" for v in p["version_stats"])
            lines.append(f"| requests served per version (`/v1/adapters/.../stats`, warm-up included) | {served} |")
        bad = [sw for sw in p["switches"] if sw["status"] != 200]
        for sw in bad[:5]:
            lines.append(f"\nfailed switch at {sw['t']:.1f} s ({sw['action']}): HTTP {sw['status']} {sw['error']}")
    for note in s.notes:
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


# --- main ------------------------------------------------------------------------------------


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
            _progress((out / "locust.log").read_text(errors="replace")[-3000:])
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
    _progress(f"results in {out}")
    return 0 if summary.passed else 1


if __name__ == "__main__":
    sys.exit(main())
