"""The soak's table per process, its request counts and verdict line, and every sample as CSV."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from loadtests.soak.samples import Counts, ProcessSummary, Sample, limits_for, process_problems, slope_per_hour
from loadtests.soak.traffic import EXPECTED_STATUS
from loadtests.stats import num


def process_row(s: ProcessSummary) -> list[str]:
    lim = limits_for(s.process)
    ok = "PASS" if not process_problems(s) else "FAIL"
    return [
        s.process,
        f"{num(s.rss_start, 0)} / {num(s.rss_end, 0)} / {num(s.rss_max, 0)}",
        f"{num(s.rss_slope, 1)} (+{num(s.rss_growth, 1)} MiB)" if s.rss_slope is not None else "n/a",
        f"< {lim.slope_mib_h:.0f}",
        f"{s.fds_start} / {'-' if s.fds_warm is None else s.fds_warm} / {s.fds_end} / {s.fds_max}",
        f"{s.threads_start} / {s.threads_end}",
        ok,
    ]


def render(
    summaries: Sequence[ProcessSummary], counts: Counts, problems: Sequence[str], settings: Mapping[str, str]
) -> str:
    header = [
        "process",
        "RSS MiB start / end / max",
        "RSS slope 2nd half MiB/h",
        "limit",
        "FDs start / warm / end / max",
        "threads start / end",
        "verdict",
    ]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 2) + "---|"]
    lines += ["| " + " | ".join(process_row(s)) + " |" for s in summaries]
    kinds = counts.by_kind
    served = ", ".join(f"{k} {kinds[k]}" for k in sorted(kinds) if k not in EXPECTED_STATUS)
    errors = ", ".join(f"{k} {kinds[k]}" for k in EXPECTED_STATUS)
    lines += [
        "",
        f"- requests served: {counts.done} ({served})",
        f"- failures: {counts.failed}",
        f"- expected 4xx (deliberate): {counts.expected_errors} ({errors})",
    ]
    lines += [f"- {k}: {v}" for k, v in settings.items()]
    verdict_line = "PASS" if not problems else "FAIL: " + "; ".join(problems)
    lines += ["", f"**Verdict: {verdict_line}**"]
    return "\n".join(lines) + "\n"


def per_request_kib(summaries: Sequence[ProcessSummary], samples: Sequence[Sample]) -> float | None:
    """The gateway's RSS slope spread over the requests it served meanwhile (KiB per request)."""
    gateway = next((s for s in summaries if s.process == "gateway"), None)
    half = max((s.t_s for s in samples), default=0.0) / 2
    # The request rate over the same window as the RSS slope (requests/h).
    rate = slope_per_hour(
        [(s.t_s, float(s.requests_done)) for s in samples if s.process == "gateway" and s.t_s >= half]
    )
    if gateway is None or gateway.rss_slope is None or not rate:
        return None
    return gateway.rss_slope * 1024 / rate


def write_csv(samples: Iterable[Sample], path: Path) -> None:
    names = [f.name for f in dataclasses.fields(Sample)]
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=names)
        writer.writeheader()
        writer.writerows(dataclasses.asdict(s) for s in samples)
