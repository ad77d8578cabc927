"""Pages of a list, OpenAI's way: at most `limit` items after the one named by `after` (an
id from the previous page), and whether more follow.

Lists in the database are read by keyset: ordered by a few columns, the last of them
unique (the id), a page starts past the `after` row's values of those columns. Unlike an
offset, that stays right while rows are added or deleted between pages, and costs the same
on page one and page one thousand. Lists already in memory (a response's input items, a
completion's messages) are paged by position.

An `after` that names nothing the caller may list is a 400 with `param` "after" whose
message each list words for itself (`unknown`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy import ColumnElement, Select, and_, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from core.errors import bad_request
from core.rows import owned

T = TypeVar("T")
U = TypeVar("U")
Order = Literal["asc", "desc"]
Key = Sequence[InstrumentedAttribute[Any]]


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    has_more: bool

    def map(self, convert: Callable[[T], U]) -> Page[U]:
        return Page(items=[convert(item) for item in self.items], has_more=self.has_more)


def check_limit(limit: int, most: int) -> None:
    if not 1 <= limit <= most:
        raise bad_request(f"limit must be between 1 and {most} (got {limit}).", param="limit")


def check_order(order: str) -> None:
    if order not in ("asc", "desc"):
        raise bad_request(f"order must be 'asc' or 'desc' (got {order!r}).", param="order")


def first_rows(s: Session, query: Select[tuple[T]], limit: int) -> Page[T]:
    """The first `limit` rows of an ordered `query`; one more is read to learn whether more follow."""
    rows = list(s.scalars(query.limit(limit + 1)))
    return Page(items=rows[:limit], has_more=len(rows) > limit)


def keyset_page(
    s: Session,
    query: Select[tuple[T]],
    key: Key,
    *,
    after: str | None,
    find: Callable[[str], T | None],
    unknown: str,
    limit: int,
    order: Order = "desc",
) -> Page[T]:
    """A page of `query`'s rows in `key` order (`desc`: greatest first), past the row that
    `find(after)` returns (None: `after` names no row of the list, a 400 saying `unknown`)."""
    if after is not None:
        cursor = find(after)
        if cursor is None:
            raise bad_request(unknown, param="after")
        query = query.where(_past(cursor, key, order))
    ordering = [column.desc() if order == "desc" else column.asc() for column in key]
    return first_rows(s, query.order_by(*ordering), limit)


def tenant_page(
    s: Session,
    model: type[T],
    tenant_id: str,
    *,
    where: Sequence[ColumnElement[bool]] = (),
    after: str | None,
    unknown: str,
    limit: int,
    order: Order = "desc",
) -> Page[T]:
    """A page of the tenant's `model` rows that match `where`, newest first (`desc`) or oldest
    first by creation time, then id; `after` is the id of any of the tenant's `model` rows."""
    table: Any = model  # a mapped class with tenant_id, created_at and id columns
    return keyset_page(
        s,
        select(model).where(table.tenant_id == tenant_id, *where),
        (table.created_at, table.id),
        after=after,
        find=lambda row_id: owned(s, table, row_id, tenant_id),
        unknown=unknown,
        limit=limit,
        order=order,
    )


def _past(cursor: object, key: Key, order: Order) -> ColumnElement[bool]:
    # (a, b) past (x, y): a past x, or a equal to x and b past y; built from the last column out.
    past: ColumnElement[bool] | None = None
    for column in reversed(key):
        value = getattr(cursor, column.key)
        beyond = column < value if order == "desc" else column > value
        past = beyond if past is None else or_(beyond, and_(column == value, past))
    assert past is not None, "a keyset orders by at least one column"
    return past


def list_page(items: Sequence[T], *, key: Callable[[T], str], after: str | None, limit: int, unknown: str) -> Page[T]:
    """A page of `items` (in the order given) past the one whose `key` is `after`
    (none: a 400 saying `unknown`)."""
    if after is not None:
        positions = {key(item): i for i, item in enumerate(items)}
        if after not in positions:
            raise bad_request(unknown, param="after")
        items = items[positions[after] + 1 :]
    return Page(items=list(items[:limit]), has_more=len(items) > limit)
