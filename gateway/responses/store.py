"""Stored responses in Tailor's database: saved, read back, chained, listed, deleted.

A response created with `store` (the default) is written before its answer reaches the
client (before `response.completed` in a stream), in the request's own transaction, so a
`previous_response_id` sent the moment the answer arrives finds it on every gateway replica.
Each row holds one turn; a conversation is read as the chain of `previous_response_id`
links with one recursive query, oldest turn first, at most MAX_TURNS deep.

Privacy is that of the interaction log: for tenants that redact personal data (or everyone,
`TAILOR_REDACT_PII`), the stored items, instructions, output and metadata are redacted
before they are written, so a later turn continues from the redacted conversation; a
response older than the tenant's retention period is hidden at once and deleted by the next
retention run (gateway.privacy). Deleting a response (or its expiry) removes that turn from
every later response that continues it. Lookups are tenant-scoped: another tenant's id
reads as unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, literal, select
from sqlalchemy.orm import Session

from core.db import Database
from core.errors import TailorError, bad_request, not_found
from core.models import Interaction, StoredResponse, Tenant
from core.pages import Order, Page, check_limit, list_page
from core.rows import from_row
from gateway.interaction_log import erase_conversation
from gateway.privacy import retention_cutoff
from gateway.redaction import redact_metadata, redact_optional, redact_value
from gateway.stored_completions import MAX_PAGE

JSON = dict[str, Any]
# The longest conversation continued; deeper chains are refused rather than walked.
MAX_TURNS = 1000
MAX_ID_CHARS = 64


@dataclass(frozen=True)
class Turn:
    """One stored response: the items it was sent and the Response it returned."""

    id: str
    model: str
    created_at: datetime
    previous_response_id: str | None
    input_items: list[JSON]
    body: JSON

    @property
    def output(self) -> list[JSON]:
        return list(self.body.get("output") or [])


def _turn(row: StoredResponse) -> Turn:
    return from_row(Turn, row, input_items=list(row.input_items or []), body=dict(row.body or {}))


# --------------------------------------------------------------------------- saving


def save(db: Database, tenant_id: str, turn: Turn, *, redact_all: bool = False) -> None:
    with db.session() as s:
        redacting = redact_all or bool(s.scalar(select(Tenant.redact_pii).where(Tenant.id == tenant_id)))
        items, body = (_redacted_items(turn.input_items), _redacted_body(turn.body)) if redacting else (None, None)
        s.add(
            StoredResponse(
                id=turn.id,
                tenant_id=tenant_id,
                model=turn.model,
                previous_response_id=turn.previous_response_id,
                input_items=items if items is not None else turn.input_items,
                body=body if body is not None else turn.body,
                created_at=turn.created_at,
            )
        )


def _redacted_items(items: list[JSON]) -> list[JSON]:
    # Ids, types, roles and statuses are structure (redaction.STRUCTURAL_KEYS or plain words).
    return [redact_value(item) for item in items]


def _redacted_body(body: Mapping[str, Any]) -> JSON:
    out = dict(body)
    out["instructions"] = redact_optional(body.get("instructions"))
    out["output"] = _redacted_items(list(body.get("output") or []))
    out["metadata"] = redact_metadata(body.get("metadata")) or {}
    return out


# --------------------------------------------------------------------------- reading


def _visible(s: Session, tenant_id: str, now: datetime | None) -> list[ColumnElement[bool]]:
    where = [StoredResponse.tenant_id == tenant_id]
    cutoff = retention_cutoff(s, tenant_id, now)
    if cutoff is not None:
        where.append(StoredResponse.created_at >= cutoff)
    return where


def _not_found(response_id: str) -> TailorError:
    # The same answer for unknown, unstored, expired, deleted and other tenants' ids.
    return not_found(f"Response with id '{response_id}' not found.", code="response_not_found", param="response_id")


def get(db: Database, tenant_id: str, response_id: str, *, now: datetime | None = None) -> Turn:
    with db.session() as s:
        return _turn(_row(s, tenant_id, response_id, now))


def _row(s: Session, tenant_id: str, response_id: str, now: datetime | None) -> StoredResponse:
    row = None
    if len(response_id) <= MAX_ID_CHARS:
        row = s.scalar(select(StoredResponse).where(StoredResponse.id == response_id, *_visible(s, tenant_id, now)))
    if row is None:
        raise _not_found(response_id)
    return row


def conversation(db: Database, tenant_id: str, response_id: str, *, now: datetime | None = None) -> list[Turn]:
    """The turns a response continues, oldest first, ending with it; [] when it is not stored.

    The walk stops at the first link that is gone (deleted, expired, never stored).
    """
    if len(response_id) > MAX_ID_CHARS:
        return []
    with db.session() as s:
        visible = _visible(s, tenant_id, now)
        start = select(StoredResponse.id, StoredResponse.previous_response_id, literal(0).label("depth")).where(
            StoredResponse.id == response_id, *visible
        )
        chain = start.cte("chain", recursive=True)
        step = (
            select(StoredResponse.id, StoredResponse.previous_response_id, (chain.c.depth + 1).label("depth"))
            .join(chain, StoredResponse.id == chain.c.previous_response_id)
            .where(chain.c.depth < MAX_TURNS, *visible)
        )
        chain = chain.union_all(step)
        query = select(StoredResponse).join(chain, StoredResponse.id == chain.c.id).order_by(chain.c.depth.desc())
        turns = [_turn(row) for row in s.scalars(query)]
    if len(turns) > MAX_TURNS:
        raise bad_request(
            f"This conversation is longer than {MAX_TURNS} responses; start a new one.",
            code="conversation_too_long",
            param="previous_response_id",
        )
    return turns


def context_items(turns: list[Turn]) -> list[JSON]:
    """Every item of a conversation in order: each turn's input, then its output."""
    return [item for turn in turns for item in (*turn.input_items, *turn.output)]


def items_used(db: Database, tenant_id: str, response_id: str, *, now: datetime | None = None) -> list[JSON]:
    """The items a response was generated from: what earlier turns said and answered, then its input."""
    turns = conversation(db, tenant_id, response_id, now=now)
    if not turns:
        raise _not_found(response_id)
    return context_items(turns[:-1]) + turns[-1].input_items


def item_page(items: list[JSON], *, after: str | None, limit: int, order: Order) -> Page[JSON]:
    check_limit(limit, MAX_PAGE)
    return list_page(
        list(reversed(items)) if order == "desc" else items,
        key=lambda item: str(item.get("id")),
        after=after,
        limit=limit,
        unknown=f"after {after!r} is not an input item of this response.",
    )


# --------------------------------------------------------------------------- deleting


def delete(db: Database, tenant_id: str, response_id: str, *, now: datetime | None = None) -> str:
    """Remove a stored response, and what the interaction log and feedback hold of it."""
    with db.session() as s:
        row = _row(s, tenant_id, response_id, now)
        logged = s.get(Interaction, row.id)
        if logged is not None and logged.tenant_id == tenant_id:
            erase_conversation(s, logged)
        s.delete(row)
        return response_id
