"""/proc samples of the gateway's process tree, their summary per process, and the verdict on them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from loadtests.procfs import ProcFS, label_tree

FD_TOLERANCE = 5
MIN_FIT_POINTS = 3


@dataclass(frozen=True)
class Limits:
    slope_mib_h: float  # RSS slope over the second half above this is a leak ...
    noise_mib: float  # ... when the fitted growth over that window is also above this


PYTHON_LIMITS = Limits(slope_mib_h=50.0, noise_mib=4.0)
ENGINE_LIMITS = Limits(slope_mib_h=100.0, noise_mib=16.0)


def limits_for(process: str) -> Limits:
    return ENGINE_LIMITS if process.split("/", 1)[0] == "engine" else PYTHON_LIMITS


@dataclass
class Counts:
    done: int = 0  # answered as intended: completions and feedback posts
    failed: int = 0
    expected_errors: int = 0  # deliberate errors answered with their expected 4xx
    by_kind: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # the first few, for the report


@dataclass(frozen=True)
class Sample:
    t_s: float
    process: str
    pid: int
    rss_mib: float
    fds: int
    threads: int
    requests_done: int
    requests_failed: int
    expected_errors: int


def take_sample(fs: ProcFS, gateway_pid: int, t_s: float, counts: Counts) -> list[Sample]:
    labels = label_tree(gateway_pid, fs.parents(), fs.name)
    out = []
    for label, pid in labels.items():
        stats = fs.stats(pid)
        if stats is not None:
            out.append(
                Sample(
                    round(t_s, 1),
                    label,
                    pid,
                    round(stats.rss_mib, 1),
                    stats.fds,
                    stats.threads,
                    counts.done,
                    counts.failed,
                    counts.expected_errors,
                )
            )
    return out


def slope_per_hour(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) in value per hour; None when it cannot be fitted."""
    if len(points) < MIN_FIT_POINTS:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    sxx = sum((t - mean_t) ** 2 for t, _ in points)
    if sxx == 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / sxx * 3600


@dataclass(frozen=True)
class ProcessSummary:
    process: str
    pids: tuple[int, ...]  # more than one: it was restarted
    rss_start: float
    rss_end: float
    rss_max: float
    rss_slope: float | None  # MiB/h over the second half
    rss_growth: float | None  # the fit's growth over the second half, MiB
    fds_start: int
    fds_warm: int | None  # at the first sample of the second half; None: not there then
    fds_end: int
    fds_max: int
    threads_start: int
    threads_end: int
    at_end: bool  # present in the last sample


def summarize(samples: Sequence[Sample]) -> list[ProcessSummary]:
    """Per process, in order of first appearance; the second half starts at half the last sample's time."""
    if not samples:
        return []
    end_t = max(s.t_s for s in samples)
    half = end_t / 2
    warm_t = min(s.t_s for s in samples if s.t_s >= half)
    by_process: dict[str, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: s.t_s):
        by_process.setdefault(s.process, []).append(s)
    out = []
    for process, mine in by_process.items():
        second = [s for s in mine if s.t_s >= half]
        slope = slope_per_hour([(s.t_s, s.rss_mib) for s in second])
        window = second[-1].t_s - second[0].t_s if second else 0.0
        warm = next((s for s in mine if s.t_s == warm_t), None)
        out.append(
            ProcessSummary(
                process=process,
                pids=tuple(dict.fromkeys(s.pid for s in mine)),
                rss_start=mine[0].rss_mib,
                rss_end=mine[-1].rss_mib,
                rss_max=max(s.rss_mib for s in mine),
                rss_slope=slope,
                rss_growth=None if slope is None else slope * window / 3600,
                fds_start=mine[0].fds,
                fds_warm=warm.fds if warm else None,
                fds_end=mine[-1].fds,
                fds_max=max(s.fds for s in mine),
                threads_start=mine[0].threads,
                threads_end=mine[-1].threads,
                at_end=mine[-1].t_s == end_t,
            )
        )
    return out


def process_problems(s: ProcessSummary) -> list[str]:
    """Why this process does not look flat after warm-up; empty when it does."""
    if s.fds_warm is None:
        # Not there when warm-up ended: only a process that stays to the end counts (a new
        # worker appearing under steady load); one that came and went is left alone.
        return [f"{s.process}: appeared after warm-up"] if s.at_end else []
    problems = []
    if len(s.pids) > 1:
        problems.append(f"{s.process}: restarted (pids {', '.join(map(str, s.pids))})")
    if not s.at_end:
        problems.append(f"{s.process}: gone before the end")
    if abs(s.fds_end - s.fds_warm) > FD_TOLERANCE:
        problems.append(f"{s.process}: {s.fds_end} FDs at the end, {s.fds_warm} after warm-up (+-{FD_TOLERANCE})")
    lim = limits_for(s.process)
    if s.rss_slope is None or s.rss_growth is None:
        problems.append(f"{s.process}: fewer than {MIN_FIT_POINTS} samples after warm-up, no RSS slope")
    elif s.rss_slope > lim.slope_mib_h and s.rss_growth > lim.noise_mib:
        problems.append(
            f"{s.process}: RSS grows {s.rss_slope:.0f} MiB/h (limit {lim.slope_mib_h:.0f}), "
            f"+{s.rss_growth:.1f} MiB after warm-up (noise floor {lim.noise_mib:.0f})"
        )
    return problems


def verdict(summaries: Sequence[ProcessSummary], counts: Counts) -> list[str]:
    problems = [p for s in summaries for p in process_problems(s)]
    if not any(s.process == "gateway" for s in summaries):
        problems.append("the gateway process could not be read")
    if counts.failed:
        problems.append(f"{counts.failed} requests failed (first: {'; '.join(counts.failures[:3])})")
    if not counts.done:
        problems.append("no request was served")
    return problems
