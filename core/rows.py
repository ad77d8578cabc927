"""Rows as the values stores hand out: a tenant's row by id, and a row as a dataclass.

Stores return frozen dataclasses, never ORM objects, so nothing outside a session can
lazy-load or change a row. Most fields are the row's columns under the same names; the
datetimes among them need no fixing, core.models reads every one back as aware UTC.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    D = TypeVar("D", bound=DataclassInstance)
else:
    D = TypeVar("D")


class TenantRow(Protocol):
    tenant_id: str


R = TypeVar("R", bound=TenantRow)


def from_row(cls: type[D], row: object, **overrides: Any) -> D:
    """A `cls` whose fields are `row`'s attributes of the same names, except those in
    `overrides` (fields named or shaped otherwise than the row's).

    A field named `metadata` must be an override: every mapped class has an attribute of
    that name, SQLAlchemy's own, which is no column.
    """
    values = {f.name: getattr(row, f.name) for f in fields(cls) if f.init and f.name not in overrides}
    return cls(**values, **overrides)


def owned(s: Session, model: type[R], row_id: object, tenant_id: str, *, max_chars: int = 40) -> R | None:
    """The `model` row with this id if it is the tenant's; None for unknown and foreign ids
    alike, and for anything that could not be an id (not a string, longer than `max_chars`)."""
    if not isinstance(row_id, str) or len(row_id) > max_chars:
        return None
    row = s.get(model, row_id)
    return row if row is not None and row.tenant_id == tenant_id else None
