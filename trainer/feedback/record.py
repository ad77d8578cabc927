"""Recording feedback on a logged interaction (the API's `POST /v1/feedback`), and the
feedback row every way of recording builds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from core.db import Database
from core.errors import TailorError, bad_request
from core.ids import new_id
from core.models import Feedback, Interaction
from core.rows import from_row
from trainer.feedback.fields import Fields, Refused, check_fields, check_interaction_id, needs_response
from trainer.records import Message

Redactor = Callable[[str], str]


@dataclass(frozen=True)
class FeedbackInfo:
    id: str
    interaction_id: str | None
    adapter_version_id: str | None
    model: str | None
    rating: str | None
    score: float | None
    correction: str | None
    preferred: str | None
    rejected: str | None
    messages: tuple[Message, ...] | None
    source: str  # api | import
    created_at: datetime


def feedback_info(row: Feedback) -> FeedbackInfo:
    return from_row(FeedbackInfo, row, messages=tuple(dict(m) for m in row.messages) if row.messages else None)


def feedback_row(
    tenant_id: str,
    fields: Fields,
    *,
    source: str,
    interaction: Interaction | None = None,
    messages: tuple[Message, ...] | None = None,
    model: str | None = None,
    redact: Redactor | None = None,
) -> Feedback:
    if redact is not None:
        fields, messages = _redacted(fields, messages, redact)
    return Feedback(
        id=new_id("fb"),
        tenant_id=tenant_id,
        source=source,
        interaction_id=interaction.id if interaction else None,
        # Copied so a signal per adapter version needs no join, and survives log pruning.
        adapter_version_id=interaction.adapter_version_id if interaction else None,
        model=interaction.model if interaction else model,
        rating=fields.rating,
        score=fields.score,
        correction=fields.correction,
        preferred=fields.preferred,
        rejected=fields.rejected,
        messages=[dict(m) for m in messages] if messages else None,
    )


def _redacted(
    fields: Fields, messages: tuple[Message, ...] | None, redact: Redactor
) -> tuple[Fields, tuple[Message, ...] | None]:
    def text(value: str | None) -> str | None:
        return None if value is None else redact(value)

    fields = replace(
        fields, correction=text(fields.correction), preferred=text(fields.preferred), rejected=text(fields.rejected)
    )
    if messages is not None:
        messages = tuple({**m, "content": redact(m["content"])} for m in messages)
    return fields, messages


def _not_found(interaction_id: str) -> TailorError:
    # The same answer for unknown and other tenants' interactions.
    return TailorError(404, f"No interaction {interaction_id!r}.", code="interaction_not_found", param="interaction_id")


def record_feedback(
    db: Database,
    tenant_id: str,
    *,
    interaction_id: str,
    rating: str | None = None,
    score: float | None = None,
    correction: str | None = None,
    preferred: str | None = None,
    rejected: str | None = None,
    redact: Redactor | None = None,
) -> FeedbackInfo:
    try:
        interaction_id = check_interaction_id(interaction_id)
        fields = check_fields(rating, score, correction, preferred, rejected)
    except Refused as exc:
        raise bad_request(exc.message + ".", param=exc.param) from None
    with db.session() as s:
        interaction = s.get(Interaction, interaction_id)
        if interaction is None or interaction.tenant_id != tenant_id:
            raise _not_found(interaction_id)
        try:
            needs_response(fields, interaction)
        except Refused as exc:
            raise bad_request(exc.message + ".", param=exc.param) from None
        row = feedback_row(tenant_id, fields, source="api", interaction=interaction, redact=redact)
        s.add(row)
    return feedback_info(row)
