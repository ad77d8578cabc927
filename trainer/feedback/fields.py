"""The checks of one piece of feedback's fields, shared by the API and the bulk import.

They raise `Refused` naming the field; the API answers it as a 400, the import as a 400
naming the line.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from typing import Any

from core.models import Interaction
from trainer.feedback.interactions import logged_answer
from trainer.message_checks import InvalidExample, check_text

RATINGS = ("good", "bad")


class Refused(Exception):
    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class Fields:
    rating: str | None
    score: float | None
    correction: str | None
    preferred: str | None
    rejected: str | None


def shown(value: Any) -> str:
    # Error messages quote what was sent, but not all of a megabyte-long value.
    return reprlib.repr(value)


def checked(field: str, check: Any) -> Any:
    try:
        return check()
    except InvalidExample as exc:
        raise Refused(str(exc), field) from None


def check_fields(rating: Any, score: Any, correction: Any, preferred: Any, rejected: Any) -> Fields:
    if rating is not None and rating not in RATINGS:
        raise Refused(f"rating must be 'good' or 'bad' (got {shown(rating)})", "rating")
    if score is not None:
        # The range check also refuses NaN and infinities, and unlike math.isfinite it
        # compares an integer of thousands of digits instead of overflowing a float.
        if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
            raise Refused(f"score must be a number from 0 to 1 (got {shown(score)})", "score")
        score = float(score)
    correction = checked("correction", lambda: check_text(correction, "correction"))
    preferred = checked("preferred", lambda: check_text(preferred, "preferred"))
    rejected = checked("rejected", lambda: check_text(rejected, "rejected"))
    if rejected is not None and preferred is None:
        raise Refused("rejected needs preferred: send the better answer as preferred", "preferred")
    if preferred is not None and preferred == rejected:
        raise Refused("preferred and rejected are identical", "rejected")
    if rating is None and score is None and correction is None and preferred is None:
        raise Refused("feedback needs at least one of rating, score, correction or preferred", None)
    return Fields(rating, score, correction, preferred, rejected)


def check_interaction_id(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise Refused(
            f"interaction_id must be a non-empty string of at most 64 characters (got {shown(value)})",
            "interaction_id",
        )
    return value


def needs_response(fields: Fields, interaction: Interaction) -> None:
    if fields.preferred is not None and fields.rejected is None and not logged_answer(interaction):
        raise Refused(
            f"preferred without rejected is compared with the logged answer, and interaction "
            f"{interaction.id} has none; send rejected as well",
            "rejected",
        )
