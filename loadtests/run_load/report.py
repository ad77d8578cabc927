"""The run's summary as markdown (summary.md): throughput, latency, per model, errors, cost, promotion."""

from __future__ import annotations

import json
from collections import Counter

from loadtests.run_load.results import Summary, _pct


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
