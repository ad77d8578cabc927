"""The machine a benchmark runs on: CPUs, load, other vLLM servers.

Figures taken on a shared machine move with whatever else runs, so every benchmark reports the
load average before and after and warns when the machine was busy or another engine competed.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Sequence
from pathlib import Path

BUSY_LOAD_PER_CPU = 0.5  # 1-min load average per CPU above which we warn the run was disturbed


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0))


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def count_vllm_processes() -> int:
    """vLLM servers on this machine (any user), from their command lines."""
    count = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if b"vllm.entrypoints" in cmdline.read_bytes():
                count += 1
    return count


def was_busy(load_before: Sequence[float], cpus: int) -> bool:
    return load_before[0] > BUSY_LOAD_PER_CPU * cpus


def load_line(before: Sequence[float], after: Sequence[float]) -> str:
    return (
        "load avg before/after: " + " ".join(f"{x:.2f}" for x in before) + " / " + " ".join(f"{x:.2f}" for x in after)
    )
