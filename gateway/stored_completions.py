"""Stored chat completions (OpenAI's `store: true`), read from the interaction log.

Every request is logged anyway (gateway.interaction_log); a chat completion sent with
`store: true` is the same row marked `stored`, with its `metadata` beside it. Its id is the
completion's `id` as the client received it (the interaction id). What this module serves
back is exactly what the log holds: redacted for tenants that redact, and gone once the
tenant's retention period has passed (hidden from the moment it expires, deleted by the next
retention run).

A stored completion is a `stored` row that was answered (status 200): a request the engine
refused, or a stream the client left, is logged but never stored. The answer kept is the
text of the first choice (the log keeps one), so `store: true` with `n` > 1 is refused; tool
calls of an answer are not in the log, so such a completion comes back with its text only.

Deleting one removes the conversation (messages, answer, metadata) and any feedback about
it, as retention does; the request's metering (model, tokens, latency) stays for usage
reports. Lookups are tenant-scoped: another tenant's id reads as unknown (404).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, select, true
from sqlalchemy.orm import Session

from core.db import Database
from core.errors import bad_request, not_found
from core.metadata import filter_from_query, has_pair
from core.models import Interaction, Tenant
from core.pages import Order, Page, check_limit, check_order, keyset_page, list_page
from core.rows import from_row
from gateway.interaction_log import erase_conversation
from gateway.privacy import retention_cutoff
from gateway.redaction import redact_metadata

MAX_PAGE = 100
MAX_ID_CHARS = 64  # interaction ids


@dataclass(frozen=True)
class Filter:
    """Which stored completions: all of them, or those of one `model` carrying every pair of `metadata`."""

    model: str | None = None
    metadata: Mapping[str, str] | None = None


@dataclass(frozen=True)
class StoredCompletion:
    id: str
    model: str
    created_at: datetime
    request: dict[str, Any]  # as logged: messages and parameters, without `model`
    answer: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    metadata: dict[str, str]

    @property
    def created(self) -> int:
        return int(self.created_at.timestamp())


@dataclass(frozen=True)
class StoredMessage:
    """One message of a stored completion's request, as OpenAI lists them."""

    id: str
    role: str
    content: str | None
    content_parts: list[dict[str, Any]] | None  # when the client sent content parts
    name: str | None
    tool_calls: list[dict[str, Any]] | None
    tool_call_id: str | None


# --------------------------------------------------------------------------- storing


def storage(kind: str, body: Mapping[str, Any]) -> tuple[bool, dict[str, str] | None]:
    """Whether a completion request is to be stored, and the metadata to store with it.

    Only chat completions are stored (OpenAI's stored completions are chat completions).
    """
    if kind != "chat" or body.get("store") is not True:
        return False, None
    if (body.get("n") or 1) > 1:
        raise bad_request(
            "store: true keeps one answer per completion; leave n out (or send 1) when storing.",
            code="invalid_value",
            param="n",
        )
    return True, dict(body.get("metadata") or {})


# --------------------------------------------------------------------------- filters


def metadata_filter(query: Iterable[tuple[str, str]]) -> dict[str, str]:
    """`metadata[key]=value` query parameters as a dict, within OpenAI's metadata bounds."""
    return filter_from_query(query)


# --------------------------------------------------------------------------- reading


def _visible(s: Session, tenant_id: str, now: datetime | None) -> list[ColumnElement[bool]]:
    # `stored = true()`, not `IS`: the form the partial index ix_interactions_stored names.
    where = [Interaction.tenant_id == tenant_id, Interaction.stored == true(), Interaction.status_code == 200]
    cutoff = retention_cutoff(s, tenant_id, now)
    if cutoff is not None:
        where.append(Interaction.created_at >= cutoff)
    return where


def _matching(s: Session, tenant_id: str, flt: Filter, now: datetime | None) -> Select[tuple[Interaction]]:
    query = select(Interaction).where(*_visible(s, tenant_id, now))
    if flt.model is not None:
        query = query.where(Interaction.model == flt.model)
    dialect = s.get_bind().dialect.name
    for key, value in sorted((flt.metadata or {}).items()):
        query = query.where(has_pair(Interaction.stored_metadata, dialect, key, value))
    return query


def _visible_row(s: Session, tenant_id: str, completion_id: str, now: datetime | None) -> Interaction | None:
    if len(completion_id) > MAX_ID_CHARS:
        return None
    return s.scalar(select(Interaction).where(Interaction.id == completion_id, *_visible(s, tenant_id, now)))


def _row(s: Session, tenant_id: str, completion_id: str, now: datetime | None) -> Interaction:
    row = _visible_row(s, tenant_id, completion_id, now)
    if row is None:
        # The same answer for unknown, unstored, expired and other tenants' ids.
        raise not_found(
            f"No stored chat completion found with id '{completion_id}'.",
            code="completion_not_found",
            param="completion_id",
        )
    return row


def _completion(row: Interaction) -> StoredCompletion:
    return from_row(
        StoredCompletion,
        row,
        request=dict(row.request or {}),
        answer=row.response_text,
        metadata=dict(row.stored_metadata or {}),
    )


def get_completion(
    db: Database, tenant_id: str, completion_id: str, *, now: datetime | None = None
) -> StoredCompletion:
    with db.session() as s:
        return _completion(_row(s, tenant_id, completion_id, now))


def list_completions(
    db: Database,
    tenant_id: str,
    flt: Filter,
    *,
    after: str | None = None,
    limit: int = 20,
    order: Order = "asc",
    now: datetime | None = None,
) -> Page[StoredCompletion]:
    """A page of stored completions, oldest first (`asc`) or newest first, after the `after` id."""
    _check_page(limit, order)
    with db.session() as s:
        return keyset_page(
            s,
            _matching(s, tenant_id, flt, now),
            (Interaction.created_at, Interaction.id),
            after=after,
            find=lambda cursor_id: _visible_row(s, tenant_id, cursor_id, now),
            unknown=f"after {after!r} is not one of your stored chat completions.",
            limit=limit,
            order=order,
        ).map(_completion)


def iter_completions(
    db: Database, tenant_id: str, flt: Filter, *, now: datetime | None = None, chunk: int = 500
) -> Iterator[StoredCompletion]:
    """Every matching stored completion, oldest first, read a page at a time."""
    after: str | None = None
    while True:
        page = list_completions(db, tenant_id, flt, after=after, limit=min(chunk, MAX_PAGE), now=now)
        yield from page.items
        if not page.has_more:
            return
        after = page.items[-1].id


def _check_page(limit: int, order: str) -> None:
    check_limit(limit, MAX_PAGE)
    check_order(order)


# --------------------------------------------------------------------------- messages


def messages(completion: StoredCompletion) -> list[StoredMessage]:
    """The request's messages in the order sent, with ids `<completion id>-<index>`."""
    raw = completion.request.get("messages")
    return [_message(f"{completion.id}-{i}", m) for i, m in enumerate(raw if isinstance(raw, list) else [])]


def _message(mid: str, raw: Any) -> StoredMessage:
    msg = raw if isinstance(raw, Mapping) else {}
    content = msg.get("content")
    parts = content if isinstance(content, list) else None
    if parts is not None:
        # What the engine saw: the text parts joined by newlines (gateway.request_policy
        # admits text parts only).
        content = "\n".join(str(p.get("text", "")) for p in parts if isinstance(p, Mapping))
    return StoredMessage(
        id=mid,
        role=str(msg.get("role", "user")),
        content=content if isinstance(content, str) else None,
        content_parts=[dict(p) for p in parts if isinstance(p, Mapping)] if parts is not None else None,
        name=msg.get("name") if isinstance(msg.get("name"), str) else None,
        tool_calls=list(msg["tool_calls"]) if isinstance(msg.get("tool_calls"), list) else None,
        tool_call_id=msg.get("tool_call_id") if isinstance(msg.get("tool_call_id"), str) else None,
    )


def message_page(
    completion: StoredCompletion, *, after: str | None = None, limit: int = 20, order: Order = "asc"
) -> Page[StoredMessage]:
    _check_page(limit, order)
    items = messages(completion)
    if order == "desc":
        items.reverse()
    return list_page(
        items,
        key=lambda m: m.id,
        after=after,
        limit=limit,
        unknown=f"after {after!r} is not a message of chat completion {completion.id}.",
    )


# --------------------------------------------------------------------------- changing


def update_metadata(
    db: Database,
    tenant_id: str,
    completion_id: str,
    metadata: Mapping[str, str] | None,
    *,
    redact_all: bool = False,
    now: datetime | None = None,
) -> StoredCompletion:
    """Replace a stored completion's metadata (None: none), redacted as the log would store it."""
    new = dict(metadata or {})
    with db.session() as s:
        row = _row(s, tenant_id, completion_id, now)
        redacting = redact_all or bool(s.scalar(select(Tenant.redact_pii).where(Tenant.id == tenant_id)))
        row.stored_metadata = redact_metadata(new) if redacting else new
        return _completion(row)


def delete_completion(db: Database, tenant_id: str, completion_id: str, *, now: datetime | None = None) -> str:
    """Remove a stored completion's conversation and the feedback about it (module docstring)."""
    with db.session() as s:
        row = _row(s, tenant_id, completion_id, now)
        erase_conversation(s, row)
        return row.id


def first_and_last(ids: Sequence[str]) -> tuple[str, str]:
    """OpenAI's `first_id` / `last_id`: its schema requires strings, so an empty page has ""."""
    return (ids[0], ids[-1]) if ids else ("", "")
