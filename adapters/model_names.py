"""The model names a tenant can call, as `GET /v1/models` lists them.

Exactly what `adapters.registry.route` accepts: the base model, each adapter's bare name
while it has an active version (its alias), and every servable version pinned as
`name@vN` (candidates, canaries, retired ones: anything not training or failed). Nothing
of another tenant. One query reads a tenant's names, however many adapters and versions
it has.

Names come in a fixed order, the base model first and then by adapter name, each alias
before its versions in version order, so that `after` pages through them: a page starts
past where the cursor's name sorts, even if that name was deleted in between.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Select, select

from adapters.registry import UNSERVABLE, model_not_found
from core.db import Database
from core.errors import bad_request
from core.models import Adapter, AdapterVersion

MAX_LIMIT = 1000

Kind = Literal["base", "alias", "version"]


@dataclass(frozen=True)
class ModelName:
    id: str  # what a request's `model` takes
    kind: Kind
    # None for the base model: it is as old as the serving process, which the gateway knows.
    created: datetime | None = None


@dataclass(frozen=True)
class Page:
    names: list[ModelName]
    has_more: bool


def pinned_name(adapter_name: str, version: int) -> str:
    return f"{adapter_name}@v{version}"


def _rows(tenant_id: str) -> Select[Any]:
    return (
        select(
            Adapter.name,
            Adapter.created_at,
            Adapter.active_version_id,
            AdapterVersion.version,
            AdapterVersion.created_at,
        )
        .join(AdapterVersion, AdapterVersion.adapter_id == Adapter.id)
        .where(Adapter.tenant_id == tenant_id, AdapterVersion.state.not_in(UNSERVABLE))
    )


def _names(rows: Iterable[Any]) -> list[ModelName]:
    """The tenant's names from (adapter name, created, active version id, version, created) rows, in order."""
    names: list[ModelName] = []
    aliased: set[str] = set()
    for name, adapter_created, active_id, version, version_created in rows:
        if active_id is not None and name not in aliased:
            aliased.add(name)
            names.append(ModelName(id=name, kind="alias", created=adapter_created))
        names.append(ModelName(id=pinned_name(name, version), kind="version", created=version_created))
    return sorted(names, key=lambda n: sort_key(n.id, base_model_name=None))


def sort_key(model: str, *, base_model_name: str | None) -> tuple[int, str, int]:
    """Where `model` sorts in a listing: the base model first, then (adapter name, 0 for the
    alias or N for `name@vN`). Any string has a place, so any string works as a cursor."""
    if model == base_model_name:
        return (0, "", 0)
    name, sep, pinned = model.partition("@v")
    if sep and pinned.isascii() and pinned.isdigit():
        return (1, name, int(pinned))
    return (1, model, 0)


def list_names(db: Database, tenant_id: str, *, base_model_name: str) -> list[ModelName]:
    """Every name the tenant can call, in listing order."""
    with db.session() as s:
        rows = s.execute(_rows(tenant_id)).all()
    return [ModelName(id=base_model_name, kind="base"), *_names(rows)]


def find_name(db: Database, tenant_id: str, model: str, *, base_model_name: str) -> ModelName:
    """`model` if the tenant can call it; 404 `model_not_found` (the same for another tenant's names)."""
    if model == base_model_name:
        return ModelName(id=model, kind="base")
    adapter_name = model.partition("@v")[0]
    with db.session() as s:
        rows = s.execute(_rows(tenant_id).where(Adapter.name == adapter_name)).all()
    found = next((n for n in _names(rows) if n.id == model), None)
    if found is None:
        raise model_not_found(model)
    return found


def page(names: list[ModelName], *, after: str | None, limit: int | None, base_model_name: str) -> Page:
    """The names past `after` (a name from an earlier page), at most `limit` of them (None: all)."""
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        raise bad_request(f"limit must be between 1 and {MAX_LIMIT}.", param="limit")
    if after:
        cursor = sort_key(after, base_model_name=base_model_name)
        names = [n for n in names if sort_key(n.id, base_model_name=base_model_name) > cursor]
    if limit is None:
        return Page(names=names, has_more=False)
    return Page(names=names[:limit], has_more=len(names) > limit)
