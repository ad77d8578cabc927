"""Feedback from product teams: ratings, scores, corrections and preferences.

Feedback either points at a logged interaction of the tenant (the usual case: a thumbs
up/down or a fixed answer for something the gateway served) or, in a bulk import, carries
its own prompt (`messages`) for examples that never went through the gateway.

Fields, all optional but at least one of rating / score / correction / preferred:

- `rating`: "good" or "bad".
- `score`: a float in [0, 1] (not 1-5: one scale, no guessing which one a client meant);
  without a rating, a score of 0.5 or more reads as good (`trainer.datasets.verdict`).
- `correction`: the answer that should have been given (alias `ideal` in imports).
- `preferred` / `rejected`: a preference pair. `preferred` alone means "better than the
  logged answer"; with `rejected`, the pair is explicit.

Rows are append-only: a later rating of the same interaction outweighs an earlier one when
datasets and signals are computed, nothing is overwritten.

Callers may pass `redact` (a text -> text function, e.g. gateway.redaction.redact_text
for tenants that asked for it): it is applied to every stored text (correction, preferred,
rejected, imported messages) after validation, so what a client sent is checked as sent.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select

from core.db import Database
from core.errors import TailorError, bad_request
from core.ids import new_id
from core.models import Feedback, Interaction
from core.pages import Page, check_limit, tenant_page
from core.rows import from_row
from trainer.datasets import (
    MAX_TEXT_CHARS,
    InvalidExample,
    Message,
    check_messages,
    check_text,
    verdict,
)
from trainer.jsonl import JsonLineError, json_lines

Redactor = Callable[[str], str]

RATINGS = ("good", "bad")
MAX_IMPORT_LINES = 10_000
MAX_IMPORT_BYTES = 64 * 1024 * 1024
MAX_LIST_LIMIT = 1000
_IMPORT_KEYS = (
    "interaction_id",
    "messages",
    "model",
    "rating",
    "score",
    "correction",
    "ideal",
    "preferred",
    "rejected",
)


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


@dataclass(frozen=True)
class ImportResult:
    imported: int
    ids: tuple[str, ...]


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


class _Refused(Exception):
    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class _Fields:
    rating: str | None
    score: float | None
    correction: str | None
    preferred: str | None
    rejected: str | None


def _shown(value: Any) -> str:
    # Error messages quote what was sent, but not all of a megabyte-long value.
    return reprlib.repr(value)


def _check(field: str, check: Any) -> Any:
    try:
        return check()
    except InvalidExample as exc:
        raise _Refused(str(exc), field) from None


def _fields(rating: Any, score: Any, correction: Any, preferred: Any, rejected: Any) -> _Fields:
    if rating is not None and rating not in RATINGS:
        raise _Refused(f"rating must be 'good' or 'bad' (got {_shown(rating)})", "rating")
    if score is not None:
        # The range check also refuses NaN and infinities, and unlike math.isfinite it
        # compares an integer of thousands of digits instead of overflowing a float.
        if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
            raise _Refused(f"score must be a number from 0 to 1 (got {_shown(score)})", "score")
        score = float(score)
    correction = _check("correction", lambda: check_text(correction, "correction"))
    preferred = _check("preferred", lambda: check_text(preferred, "preferred"))
    rejected = _check("rejected", lambda: check_text(rejected, "rejected"))
    if rejected is not None and preferred is None:
        raise _Refused("rejected needs preferred: send the better answer as preferred", "preferred")
    if preferred is not None and preferred == rejected:
        raise _Refused("preferred and rejected are identical", "rejected")
    if rating is None and score is None and correction is None and preferred is None:
        raise _Refused("feedback needs at least one of rating, score, correction or preferred", None)
    return _Fields(rating, score, correction, preferred, rejected)


def _check_interaction_id(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise _Refused(
            f"interaction_id must be a non-empty string of at most 64 characters (got {_shown(value)})",
            "interaction_id",
        )
    return value


def _needs_response(fields: _Fields, interaction: Interaction) -> None:
    if fields.preferred is not None and fields.rejected is None and not _logged_answer(interaction):
        raise _Refused(
            f"preferred without rejected is compared with the logged answer, and interaction "
            f"{interaction.id} has none; send rejected as well",
            "rejected",
        )


def _logged_answer(interaction: Interaction) -> str | None:
    return interaction.response_text if interaction.status_code < 400 else None


def _info(row: Feedback) -> FeedbackInfo:
    return from_row(FeedbackInfo, row, messages=tuple(dict(m) for m in row.messages) if row.messages else None)


def _row(
    tenant_id: str,
    fields: _Fields,
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
    fields: _Fields, messages: tuple[Message, ...] | None, redact: Redactor
) -> tuple[_Fields, tuple[Message, ...] | None]:
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
        interaction_id = _check_interaction_id(interaction_id)
        fields = _fields(rating, score, correction, preferred, rejected)
    except _Refused as exc:
        raise bad_request(exc.message + ".", param=exc.param) from None
    with db.session() as s:
        interaction = s.get(Interaction, interaction_id)
        if interaction is None or interaction.tenant_id != tenant_id:
            raise _not_found(interaction_id)
        try:
            _needs_response(fields, interaction)
        except _Refused as exc:
            raise bad_request(exc.message + ".", param=exc.param) from None
        row = _row(tenant_id, fields, source="api", interaction=interaction, redact=redact)
        s.add(row)
    return _info(row)


# -----------------------------------------------------------------------------
# bulk import


@dataclass(frozen=True)
class _ImportLine:
    lineno: int
    fields: _Fields
    interaction_id: str | None
    messages: tuple[Message, ...] | None
    model: str | None


def _parse_line(lineno: int, obj: Any) -> _ImportLine:
    if not isinstance(obj, dict):
        raise _Refused("must be a JSON object", None)
    unknown = sorted(set(obj) - set(_IMPORT_KEYS))
    if unknown:
        raise _Refused(f"unknown field {unknown[0]!r} (allowed: {', '.join(_IMPORT_KEYS)})", unknown[0])
    if obj.get("ideal") is not None and obj.get("correction") is not None:
        raise _Refused("give correction or ideal, not both", "ideal")
    correction = obj.get("correction", obj.get("ideal"))
    fields = _fields(obj.get("rating"), obj.get("score"), correction, obj.get("preferred"), obj.get("rejected"))
    has_id, has_messages = obj.get("interaction_id") is not None, obj.get("messages") is not None
    if has_id == has_messages:
        raise _Refused(
            "give either interaction_id (feedback on a logged answer) or messages (a self-contained example)",
            "interaction_id" if has_id else "messages",
        )
    if has_id:
        if obj.get("model") is not None:
            raise _Refused("model is taken from the interaction; send it only with messages", "model")
        return _ImportLine(lineno, fields, _check_interaction_id(obj["interaction_id"]), None, None)
    messages = _check("messages", lambda: check_messages(obj["messages"], max_chars=MAX_TEXT_CHARS))
    if len(messages) > 1 and messages[-1]["role"] == "assistant":
        prompt, answer = messages[:-1], messages[-1]["content"]
    else:
        prompt, answer = messages, None
    if prompt[-1]["role"] != "user":
        raise _Refused(
            "messages must end with a user message, optionally followed by the assistant answer being judged",
            "messages",
        )
    if answer is None and fields.correction is None and fields.rejected is None:
        raise _Refused(
            "without an assistant answer at the end of messages there is nothing to rate "
            "or prefer against: give correction (or ideal), or preferred and rejected",
            "messages",
        )
    model = obj.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip() or len(model) > 200):
        raise _Refused(f"model must be a non-empty string of at most 200 characters (got {_shown(model)})", "model")
    return _ImportLine(lineno, fields, None, messages, model)


def _import_error(lineno: int, message: str) -> TailorError:
    return bad_request(f"line {lineno}: {message}. Nothing was imported.", code="invalid_file", param="file")


def import_feedback_jsonl(
    db: Database,
    tenant_id: str,
    lines: bytes,
    *,
    max_lines: int = MAX_IMPORT_LINES,
    redact: Redactor | None = None,
) -> ImportResult:
    """Import feedback, one JSON object per line; all lines or none.

    Every line is checked (fields, then that each referenced interaction is the
    tenant's) before anything is written; the rows go in one transaction.
    """
    if len(lines) > MAX_IMPORT_BYTES:
        raise TailorError(413, f"Import exceeds {MAX_IMPORT_BYTES} bytes.", code="file_too_large", param="file")
    parsed: list[_ImportLine] = []
    try:
        for line in json_lines(lines):
            if len(parsed) >= max_lines:
                raise bad_request(
                    f"Import has more than {max_lines} lines; split it into several imports.",
                    code="too_many_lines",
                    param="file",
                )
            try:
                parsed.append(_parse_line(line.lineno, line.value))
            except _Refused as exc:
                raise _import_error(line.lineno, exc.message) from None
    except JsonLineError as exc:
        raise _import_error(exc.lineno, exc.reason) from None
    if not parsed:
        raise bad_request("Import is empty: expected one JSON object per line.", code="empty_file", param="file")

    with db.session() as s:
        wanted = sorted({p.interaction_id for p in parsed if p.interaction_id})
        interactions: dict[str, Interaction] = {}
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            found = s.scalars(select(Interaction).where(Interaction.tenant_id == tenant_id, Interaction.id.in_(chunk)))
            interactions.update({x.id: x for x in found})
        rows: list[Feedback] = []
        for p in parsed:
            if p.interaction_id is None:
                rows.append(
                    _row(tenant_id, p.fields, source="import", messages=p.messages, model=p.model, redact=redact)
                )
                continue
            interaction = interactions.get(p.interaction_id)
            if interaction is None:
                raise _import_error(p.lineno, f"interaction_id {p.interaction_id!r} not found")
            try:
                _needs_response(p.fields, interaction)
            except _Refused as exc:
                raise _import_error(p.lineno, exc.message) from None
            rows.append(_row(tenant_id, p.fields, source="import", interaction=interaction, redact=redact))
        s.add_all(rows)
    return ImportResult(imported=len(rows), ids=tuple(r.id for r in rows))


# -----------------------------------------------------------------------------
# reading


def list_feedback(db: Database, tenant_id: str, *, limit: int = 100, after: str | None = None) -> FeedbackPage:
    """The tenant's feedback, newest first; `after` is the last id of the previous page."""
    check_limit(limit, MAX_LIST_LIMIT)
    with db.session() as s:
        unknown = f"after {after!r} is not one of your feedback ids."
        return tenant_page(s, Feedback, tenant_id, after=after, unknown=unknown, limit=limit).map(_info)


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
