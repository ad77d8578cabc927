"""Bulk import of feedback (JSON lines): on logged interactions, or self-contained examples
that carry their own prompt (`messages`); all lines or none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.db import Database
from core.errors import TailorError, bad_request
from core.models import Feedback
from trainer.feedback.fields import Fields, Refused, check_fields, check_interaction_id, checked, needs_response, shown
from trainer.feedback.interactions import tenant_interactions
from trainer.feedback.record import Redactor, feedback_row
from trainer.jsonl import JsonLineError, json_lines
from trainer.message_checks import MAX_TEXT_CHARS, check_messages
from trainer.records import Message

MAX_IMPORT_LINES = 10_000
MAX_IMPORT_BYTES = 64 * 1024 * 1024
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
class ImportResult:
    imported: int
    ids: tuple[str, ...]


@dataclass(frozen=True)
class _ImportLine:
    lineno: int
    fields: Fields
    interaction_id: str | None
    messages: tuple[Message, ...] | None
    model: str | None


def _parse_line(lineno: int, obj: Any) -> _ImportLine:
    if not isinstance(obj, dict):
        raise Refused("must be a JSON object", None)
    unknown = sorted(set(obj) - set(_IMPORT_KEYS))
    if unknown:
        raise Refused(f"unknown field {unknown[0]!r} (allowed: {', '.join(_IMPORT_KEYS)})", unknown[0])
    if obj.get("ideal") is not None and obj.get("correction") is not None:
        raise Refused("give correction or ideal, not both", "ideal")
    correction = obj.get("correction", obj.get("ideal"))
    fields = check_fields(obj.get("rating"), obj.get("score"), correction, obj.get("preferred"), obj.get("rejected"))
    has_id, has_messages = obj.get("interaction_id") is not None, obj.get("messages") is not None
    if has_id == has_messages:
        raise Refused(
            "give either interaction_id (feedback on a logged answer) or messages (a self-contained example)",
            "interaction_id" if has_id else "messages",
        )
    if has_id:
        if obj.get("model") is not None:
            raise Refused("model is taken from the interaction; send it only with messages", "model")
        return _ImportLine(lineno, fields, check_interaction_id(obj["interaction_id"]), None, None)
    messages = checked("messages", lambda: check_messages(obj["messages"], max_chars=MAX_TEXT_CHARS))
    if len(messages) > 1 and messages[-1]["role"] == "assistant":
        prompt, answer = messages[:-1], messages[-1]["content"]
    else:
        prompt, answer = messages, None
    if prompt[-1]["role"] != "user":
        raise Refused(
            "messages must end with a user message, optionally followed by the assistant answer being judged",
            "messages",
        )
    if answer is None and fields.correction is None and fields.rejected is None:
        raise Refused(
            "without an assistant answer at the end of messages there is nothing to rate "
            "or prefer against: give correction (or ideal), or preferred and rejected",
            "messages",
        )
    model = obj.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip() or len(model) > 200):
        raise Refused(f"model must be a non-empty string of at most 200 characters (got {shown(model)})", "model")
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
            except Refused as exc:
                raise _import_error(line.lineno, exc.message) from None
    except JsonLineError as exc:
        raise _import_error(exc.lineno, exc.reason) from None
    if not parsed:
        raise bad_request("Import is empty: expected one JSON object per line.", code="empty_file", param="file")

    with db.session() as s:
        interactions = tenant_interactions(s, tenant_id, (p.interaction_id for p in parsed if p.interaction_id))
        rows: list[Feedback] = []
        for p in parsed:
            if p.interaction_id is None:
                rows.append(
                    feedback_row(
                        tenant_id, p.fields, source="import", messages=p.messages, model=p.model, redact=redact
                    )
                )
                continue
            interaction = interactions.get(p.interaction_id)
            if interaction is None:
                raise _import_error(p.lineno, f"interaction_id {p.interaction_id!r} not found")
            try:
                needs_response(p.fields, interaction)
            except Refused as exc:
                raise _import_error(p.lineno, exc.message) from None
            rows.append(feedback_row(tenant_id, p.fields, source="import", interaction=interaction, redact=redact))
        s.add_all(rows)
    return ImportResult(imported=len(rows), ids=tuple(r.id for r in rows))
