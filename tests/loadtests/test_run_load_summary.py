"""run_load after the run: reading locust's stats, failures and the records file; the summary
figures (requests/s, error rate, p50/p95/p99, TTFT/TPOT, per model, cost per 1K requests,
promotion switches) and its markdown; and records written by the locustfile feeding them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from loadtests.run_load import metering
from loadtests.run_load import promoter as load_promoter
from loadtests.run_load import report as load_report
from loadtests.run_load import results as load_results
from tests.loadtests.locust_fakes import (
    FakeClient,
    FakeClock,
    Locustfile,
    make_user,
    ok_responder,
    options,
    write_tenants,
)

# --- run_load: reading results --------------------------------------------------------------

STATS_HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
    "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)
STATS_CSV = f"""{STATS_HEADER}
POST,chat,40,1,820,850.5,300,2100,0,0.8,0.02,820,900,950,1000,1200,1500,1800,2000,2100,2100,2100
POST,chat stream,60,2,1900,1950.25,700,4100,30,1.2,0.04,1900,2000,2200,2400,3000,3500,3900,4000,4100,4100,4100
TTFT,chat stream,58,0,210,230.2,90,800,30,1.16,0,210,250,280,300,400,600,700,750,800,800,800
TPOT,chat stream,55,0,45,46.7,30,90,30,1.1,0,45,50,55,60,70,80,85,88,90,90,90
POST,feedback,30,1,12,14.1,5,60,0,0.6,0,12,13,15,16,20,40,50,55,60,60,60
GET,GET models,1,0,5,5,5,5,100,0.02,0,5,5,5,5,5,5,5,5,5,5,5
,Aggregated,244,4,500,700,5,4100,20,4.88,0.06,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A
"""
FAILURES_CSV = """Method,Name,Error,Occurrences,First Seen,Last Seen
POST,chat,HTTP 429: rate | limit,1,1000.1,1000.1
POST,chat stream,stream ended without [DONE],2,1001.0,1040.0
"""


def chat_record(model: str, ok: bool = True, **fields: Any) -> dict[str, Any]:
    return {"kind": "chat", "tenant": "acme", "model": model, "base": model == "Base", "ok": ok, **fields}


RECORDS = [
    {"kind": "meta", "event": "start", "t": 1000.0},
    chat_record("support", latency_ms=100.0, ttft_ms=40.0, tpot_ms=10.0, prompt_tokens=20, completion_tokens=10),
    chat_record("support", latency_ms=300.0, prompt_tokens=30, completion_tokens=20),
    chat_record("support", latency_ms=200.0, ttft_ms=60.0, tpot_ms=12.0, prompt_tokens=25, completion_tokens=30),
    chat_record("support", ok=False, latency_ms=5000.0, completion_tokens=999, error="HTTP 500"),
    chat_record("Base", latency_ms=150.0, prompt_tokens=25, completion_tokens=40),
    {"kind": "feedback", "tenant": "acme", "ok": True, "status": 201, "latency_ms": 12.0},
    {"kind": "meta", "event": "stop", "t": 1050.0, "interrupted": 2},
]
CONFIG: dict[str, Any] = {
    "users": 8,
    "spawn_rate": 4.0,
    "run_time": "60s",
    "tenants": 3,
    "adapters_per_tenant": 3,
    "stream_share": 0.6,
    "long_share": 0.25,
    "feedback_share": 0.3,
    "zipf_s": 1.2,
    "min_tokens": 8,
    "max_tokens": 48,
    "warmup": True,
    "promote_during_load": False,
    "prices": {"Base": {"prompt": 0.0005, "completion": 0.0015}},
}


def write_run(out: Path, *, stats: str = STATS_CSV, records: list[dict[str, Any]] | None = RECORDS) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "locust_stats.csv").write_text(stats)
    (out / "locust_failures.csv").write_text(FAILURES_CSV)
    if records is not None:
        lines = [json.dumps(r) for r in records]
        lines.insert(3, "{truncated line")  # a partly written line is skipped
        (out / "records.jsonl").write_text("\n".join(lines) + "\n")
    return out


METERING = metering.usage_delta(
    {"data": [{"model": "Base", "requests": 10, "cost": 0.01}]},
    {
        "data": [
            {
                "model": "Base",
                "requests": 60,
                "errors": 1,
                "prompt_tokens": 900,
                "completion_tokens": 300,
                "cost": 0.035,
            },
            {"model": "support", "requests": 150, "client_closed": 2, "prompt_tokens": 3000, "cost": 0.45},
        ]
    },
)


def summarize(out: Path, **overrides: Any) -> load_results.Summary:
    kwargs: dict[str, Any] = {
        "started_at": "2025-06-01 12:00:00",
        "target": "http://tailor (given)",
        "config": dict(CONFIG),
        "max_error_rate": 0.05,
        "metering": METERING,
        "metering_note": "",
        "promoter": None,
        "promoted": None,
    }
    kwargs.update(overrides)
    return load_results.summarize(out, **kwargs)


def test_read_stats_parses_locust_csv_and_skips_the_aggregated_row(tmp_path: Path) -> None:
    rows = load_results.read_stats(write_run(tmp_path) / "locust_stats.csv")
    assert [(r.type, r.name) for r in rows] == [
        ("POST", "chat"),
        ("POST", "chat stream"),
        ("TTFT", "chat stream"),
        ("TPOT", "chat stream"),
        ("POST", "feedback"),
        ("GET", "GET models"),
    ]
    stream = rows[1]
    assert (stream.requests, stream.failures, stream.median, stream.mean, stream.rps) == (60, 2, 1900, 1950.25, 1.2)
    assert (stream.p50, stream.p95, stream.p99) == (1900.0, 3500.0, 4000.0)


def test_read_stats_turns_na_and_nan_into_none(tmp_path: Path) -> None:
    path = tmp_path / "stats.csv"
    path.write_text(f"{STATS_HEADER}\nPOST,chat,0,0,N/A,nan,0,0,0,,0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A\n")
    [row] = load_results.read_stats(path)
    assert (row.median, row.mean, row.p50, row.p95, row.p99, row.rps) == (None, None, None, None, None, 0.0)
    assert (
        load_results._float("12.5") == 12.5 and load_results._float(None) is None and load_results._float("nan") is None
    )


def test_read_failures_and_records(tmp_path: Path) -> None:
    out = write_run(tmp_path)
    assert load_results.read_failures(out / "locust_failures.csv") == [
        ("chat", "HTTP 429: rate | limit", 1),
        ("chat stream", "stream ended without [DONE]", 2),
    ]
    assert load_results.read_failures(out / "missing.csv") == []
    records, meta = load_results.read_records(out / "records.jsonl")
    assert len(records) == 6 and meta["start"]["t"] == 1000.0 and meta["stop"]["interrupted"] == 2
    assert load_results.read_records(out / "missing.jsonl") == ([], {})


def test_pct_is_the_nearest_rank_percentile() -> None:
    values = [float(v) for v in range(10, 0, -1)]  # unsorted on purpose
    assert load_results._pct(values, 0.5) == 5.0
    assert load_results._pct(values, 0.95) == 10.0
    assert load_results._pct(values, 0.99) == 10.0
    assert load_results._pct(values, 0.0) == 1.0
    assert load_results._pct([7.0], 0.5) == 7.0
    assert load_results._pct([], 0.5) is None


def test_ms_formats_large_values_without_decimals() -> None:
    assert [load_report._ms(x) for x in (None, 0, 45.04, 99.96, 100, 1234.5, 12345)] == [
        "–",
        "0.0",
        "45.0",
        "100.0",
        "100",
        "1,234",
        "12,345",
    ]


# --- run_load: the summary ------------------------------------------------------------------


def test_summary_figures(tmp_path: Path) -> None:
    s = summarize(write_run(tmp_path))
    assert s.duration_s == 50.0  # from the records' meta lines
    assert (s.chat_requests, s.chat_failures, s.feedback_requests, s.feedback_failures) == (100, 3, 30, 1)
    assert s.chat_rps == pytest.approx(2.0)
    assert s.total_rps == pytest.approx(2.6)  # chat + feedback; GET models is not counted
    assert s.error_rate == pytest.approx(4 / 130)  # chat and feedback failures
    assert s.passed is True
    assert s.interrupted == 2
    assert (s.prompt_tokens, s.completion_tokens) == (100, 100)  # answered chats only
    assert s.completion_tokens_per_s == pytest.approx(2.0)
    assert s.cost_per_1k_requests == pytest.approx(0.475 / 200 * 1000)
    assert s.latency["latency: chat stream"] == {
        "requests": 60,
        "failures": 2,
        "p50": 1900.0,
        "p95": 3500.0,
        "p99": 4000.0,
        "mean": 1950.25,
    }
    assert s.latency["TTFT: chat stream"]["p95"] == 600.0 and s.latency["TPOT: chat stream"]["p99"] == 88.0
    assert list(s.per_model) == ["support", "Base"]  # most requests first
    assert s.per_model["support"] == {
        "base": False,
        "requests": 4,
        "failures": 1,
        "completion_tokens": 60,
        "p50_latency_ms": 200.0,
        "p50_ttft_ms": 40.0,
        "p50_tpot_ms": 10.0,
    }
    assert s.per_model["Base"]["base"] is True and s.per_model["Base"]["p50_ttft_ms"] is None
    assert s.failures == [("chat", "HTTP 429: rate | limit", 1), ("chat stream", "stream ended without [DONE]", 2)]
    json.dumps(asdict(s), default=str)  # summary.json is written from this


def test_summary_fails_above_the_error_threshold(tmp_path: Path) -> None:
    s = summarize(write_run(tmp_path), max_error_rate=0.02)
    assert s.passed is False
    assert "error rate 3.08% (threshold 2.00%): **FAIL**" in load_report.render(s)


def test_summary_without_requests_is_a_failure(tmp_path: Path) -> None:
    s = summarize(write_run(tmp_path, stats=STATS_HEADER + "\n"))
    assert s.chat_requests == 0 and s.error_rate == 1.0 and s.passed is False
    assert s.chat_rps == 0.0 and s.total_rps == 0.0


def test_summary_without_meta_lines_uses_the_run_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    monkeypatch.setattr(load_results, "parse_timespan", lambda text: asked.append(text) or 80.0)
    s = summarize(write_run(tmp_path, records=None))
    assert asked == ["60s"] and s.duration_s == 80.0
    assert s.chat_rps == pytest.approx(100 / 80) and s.interrupted == 0 and s.per_model == {}


def test_rendered_markdown_has_the_figures(tmp_path: Path) -> None:
    text = load_report.render(summarize(write_run(tmp_path)))
    lines = text.splitlines()
    assert lines[0] == "# Tailor load test, 2025-06-01 12:00:00"
    expected = [
        "- target: http://tailor (given)",
        "| chat requests/s (completed) | 2.00 |",
        "| all requests/s (chat + feedback) | 2.60 |",
        "| completion tokens/s | 2.0 |",
        "| prompt tokens/s | 2.0 |",
        "| chat requests (failed) | 100 (3) |",
        "| feedback posts (failed) | 30 (1) |",
        "| cut off by the run time (not counted) | 2 |",
        "| latency: chat | 40 | 1 | 820 | 1,500 | 2,000 | 850 |",
        "| latency: chat stream | 60 | 2 | 1,900 | 3,500 | 4,000 | 1,950 |",
        "| TTFT: chat stream | 58 | 0 | 210 | 600 | 750 | 230 |",
        "| TPOT: chat stream | 55 | 0 | 45.0 | 80.0 | 88.0 | 46.7 |",
        "| latency: feedback | 30 | 1 | 12.0 | 40.0 | 55.0 | 14.1 |",
        "| GET: GET models | 1 | 0 | 5.0 | 5.0 | 5.0 | 5.0 |",
        "| support | adapter | 4 | 1 | 60 | 200 | 40.0 | 10.0 |",
        "| Base | base | 1 | 0 | 40 | 150 | – | – |",
        "error rate 3.08% (threshold 5.00%): **PASS**",
        "| chat stream | stream ended without [DONE] | 2 |",
        "| chat | HTTP 429: rate / limit | 1 |",
        "| support | 150 | 0 | 2 | 3000 | 0 | 0.450000 |",
        "| Base | 50 | 1 | 0 | 900 | 300 | 0.025000 |",
        "| **total** | 200 | 1 | 2 | 3900 | 300 | 0.475000 |",
        "**cost per 1K requests: 2.3750**",
    ]
    for line in expected:
        assert line in lines, line
    # fixed order of the latency table, then the rest
    order = [lines.index(x) for x in expected[8:14]]
    assert order == sorted(order)
    assert "scenario: 8 users (spawn 4.0/s) for 60s; 3 tenants x 3 adapters" in text
    assert "stream 60%, long prompts 25%, feedback 30% of answers; max_tokens 8-48" in text
    assert '`{"Base": {"prompt": 0.0005, "completion": 0.0015}}`' in text
    assert "Promotion during load" not in text and "promotion flips" not in text


def test_rendered_markdown_without_metering_shows_locust_side_tokens(tmp_path: Path) -> None:
    note = "GET /admin/usage: 404 (no metering route on this gateway)"
    s = summarize(write_run(tmp_path), metering=None, metering_note=note)
    assert s.cost_per_1k_requests is None
    text = load_report.render(s)
    assert f"cost per 1K requests: **n/a** ({note})" in text
    assert (
        "locust-side usage instead: 100 prompt + 100 completion tokens over 97 answered chat requests (2 per request)"
        in text
    )


def test_summary_and_markdown_of_promotion_during_load(tmp_path: Path) -> None:
    promoter = load_promoter.Promoter("http://tailor", "adm", "acme", "support", interval_s=2.0)
    promoter.switches = [
        load_promoter.Switch(2.0, "rollback", 200, 12.0, 1),
        load_promoter.Switch(4.0, "activate v2", 200, 20.0, 2),
        load_promoter.Switch(6.0, "rollback", 500, 300.0, None, "database is locked"),
    ]
    records = [*RECORDS[:-1], {**chat_record("support"), "tenant": "globex"}, RECORDS[-1]]  # not the flipped tenant
    config = {**CONFIG, "promote_during_load": True, "promote_tenant": "acme"}
    version_stats = [{"version": 1, "requests": 5, "errors": 0}, {"version": 2, "requests": 7, "errors": 1}]
    s = summarize(
        write_run(tmp_path, records=records),
        config=config,
        promoter=promoter,
        promoted="support",
        version_stats=version_stats,
    )
    assert s.promotion is not None
    assert {k: v for k, v in s.promotion.items() if k not in ("switches", "version_stats")} == {
        "tenant": "acme",
        "adapter": "support",
        "interval_s": 2.0,
        "switches_ok": 2,
        "switches_failed": 1,
        "requests_to_adapter": 4,
        "failed_requests_to_adapter": 1,
        "failed_requests_all": 4,
    }
    text = load_report.render(s)
    lines = text.splitlines()
    for line in [
        "| switches done | 2 (1 rollback, 1 activate v2) |",
        "| switches failed | 1 |",
        "| switch call p50 / max (ms) | 20.0 / 300 |",
        "| requests to the flipped adapter (failed) | 4 (1) |",
        "| failed requests during the run, all (target 0) | 4 |",
        "| requests served per version (`/v1/adapters/.../stats`, warm-up included) "
        "| v1: 5 (0 errors), v2: 7 (1 errors) |",
        "failed switch at 6.0 s (rollback): HTTP 500 database is locked",
    ]:
        assert line in lines, line
    assert "`acme/support` flipped between versions 1 and 2 every 2 s" in text
    assert "**promotion flips during load**" in text


def test_records_written_by_the_locustfile_feed_the_summary(lf: Locustfile, clock: FakeClock, tmp_path: Path) -> None:
    """The two halves together: locustfile records -> run_load per-model figures and token throughput."""
    out = tmp_path / "run"
    opts = options(write_tenants(tmp_path), records_file=str(out / "records.jsonl"), feedback_share=0.0)
    lf.events.test_start.fire(environment=SimpleNamespace(parsed_options=opts))
    client = FakeClient(ok_responder(clock))
    user = make_user(lf, opts, client, seed=7)
    for _ in range(50):
        clock.now = 0.0
        user.chat()
    clock.now = 10.0
    lf.events.test_stop.fire(environment=SimpleNamespace(parsed_options=opts))
    write_run(out, records=None)
    s = summarize(out)

    assert s.duration_s == pytest.approx(10.0)
    assert sum(m["requests"] for m in s.per_model.values()) == 50
    streamed = sum(1 for p in client.chats() if p.stream)
    assert s.completion_tokens == streamed * 3 + (50 - streamed) * 5
    assert s.completion_tokens_per_s == pytest.approx(s.completion_tokens / 10.0)
    for model, figures in s.per_model.items():
        assert figures["failures"] == 0 and figures["base"] == (model == "Base")
        if any(p.stream and p.body["model"] == model for p in client.chats()):
            assert figures["p50_ttft_ms"] == pytest.approx(100.0)  # first token chunk at 0.1 s
            assert figures["p50_tpot_ms"] == pytest.approx(150.0)  # (400 ms - 100 ms) / (3 - 1)
        else:
            assert figures["p50_ttft_ms"] is None and figures["p50_tpot_ms"] is None
    assert math.isclose(sum(m["completion_tokens"] for m in s.per_model.values()), s.completion_tokens)
