"""The run's figures from locust's CSV files, the locustfile's records and the metering delta."""

from __future__ import annotations

import contextlib
import csv
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtests.run_load.locust_process import parse_timespan
from loadtests.run_load.promoter import Promoter


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
