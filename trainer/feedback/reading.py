"""Reading feedback back: the tenant's list, and how served answers were judged."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from core.db import Database
from core.models import Feedback
from core.pages import Page, check_limit, tenant_page
from trainer.feedback.record import FeedbackInfo, feedback_info
from trainer.feedback.verdicts import verdict

MAX_LIST_LIMIT = 1000

FeedbackPage = Page[FeedbackInfo]


@dataclass(frozen=True)
class FeedbackSignal:
    """How served answers were judged: per interaction, its newest opinion counts.

    `good`/`bad`: interactions whose newest rating (or score) reads so. `corrections`:
    interactions with a correction or a `preferred` answer that beats the logged one.
    `share_good` = good / (good + bad), `correction_rate` = corrections / judged; both
    None when nothing was judged. Imported examples without an interaction are not
    served answers and are not counted.
    """

    judged: int
    good: int
    bad: int
    corrections: int
    share_good: float | None
    correction_rate: float | None


def list_feedback(db: Database, tenant_id: str, *, limit: int = 100, after: str | None = None) -> FeedbackPage:
    """The tenant's feedback, newest first; `after` is the last id of the previous page."""
    check_limit(limit, MAX_LIST_LIMIT)
    with db.session() as s:
        unknown = f"after {after!r} is not one of your feedback ids."
        return tenant_page(s, Feedback, tenant_id, after=after, unknown=unknown, limit=limit).map(feedback_info)


def feedback_signal(
    db: Database,
    tenant_id: str,
    adapter_version_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> FeedbackSignal:
    """Good/bad/correction counts over served answers (see FeedbackSignal).

    `adapter_version_id` None counts every answer of the tenant, whatever served it.
    """
    query = select(
        Feedback.interaction_id,
        Feedback.rating,
        Feedback.score,
        Feedback.correction,
        Feedback.preferred,
        Feedback.rejected,
    ).where(Feedback.tenant_id == tenant_id, Feedback.interaction_id.is_not(None))
    if adapter_version_id is not None:
        query = query.where(Feedback.adapter_version_id == adapter_version_id)
    # The bounds are made UTC as they are bound (core.models.UTCDateTime), like the column.
    if since is not None:
        query = query.where(Feedback.created_at >= since)
    if until is not None:
        query = query.where(Feedback.created_at < until)
    query = query.order_by(Feedback.created_at, Feedback.id)
    latest: dict[str, str | None] = {}
    corrected: set[str] = set()
    with db.session() as s:
        for interaction_id, rating, score, correction, preferred, rejected in s.execute(query):
            v = verdict(rating, score)
            if v is not None:
                latest[interaction_id] = v  # the newest opinion counts
            else:
                latest.setdefault(interaction_id, None)
            if correction is not None or (preferred is not None and rejected is None):
                corrected.add(interaction_id)
    good = sum(1 for v in latest.values() if v == "good")
    bad = sum(1 for v in latest.values() if v == "bad")
    judged = len(latest)
    return FeedbackSignal(
        judged=judged,
        good=good,
        bad=bad,
        corrections=len(corrected),
        share_good=good / (good + bad) if good + bad else None,
        correction_rate=len(corrected) / judged if judged else None,
    )
