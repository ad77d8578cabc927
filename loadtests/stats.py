"""Percentiles, the ABBA round order and number formatting the benchmarks share."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); `q` in percent."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def to_ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def num(value: float | None, digits: int) -> str:
    """`value` with thousands separators and `digits` decimals; "n/a" for no value."""
    return "n/a" if value is None else f"{value:,.{digits}f}"


def abba(rounds: int, first: str, second: str) -> list[str]:
    """first, second, second, first, first, second, ...: each goes first equally often, so drift
    (thermal, other tenants of the machine, cache state) falls on both alike."""
    order: list[str] = []
    for pair in range(rounds):
        order += [first, second] if pair % 2 == 0 else [second, first]
    return order
