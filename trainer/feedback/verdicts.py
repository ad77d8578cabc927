"""How one piece of feedback reads: good, bad, or neither.

A rating says it; a score (0..1) without a rating reads as good from GOOD_SCORE up. The
console counts the same way in SQL (gateway.console.queries).
"""

from __future__ import annotations

from typing import Literal

# A score (0..1) without a rating reads as "good" from this value up.
GOOD_SCORE = 0.5

Verdict = Literal["good", "bad"]


def verdict(rating: str | None, score: float | None) -> Verdict | None:
    """How one piece of feedback reads as good / bad: the rating wins, else the score."""
    if rating in ("good", "bad"):
        return rating  # type: ignore[return-value]
    if score is not None:
        return "good" if score >= GOOD_SCORE else "bad"
    return None
