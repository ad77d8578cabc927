"""core.rows, core.pages and core.models.UTCDateTime, on SQLite and PostgreSQL: rows read
back as dataclasses with aware UTC datetimes, a tenant's row by id, and keyset pages that
cover a list exactly once in either order."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from core.db import Database
from core.errors import TailorError
from core.models import StoredFile, Tenant
from core.pages import Page, keyset_page, list_page
from core.rows import from_row, owned

WHEN = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
EAST = timezone(timedelta(hours=5))


@dataclass(frozen=True)
class Named:
    id: str
    name: str
    created_at: datetime


def _tenant(db: Database, tenant_id: str, created_at: datetime) -> None:
    with db.session() as s:
        s.add(Tenant(id=tenant_id, name=tenant_id, created_at=created_at))


def _files(db: Database, tenant_id: str, stamps: list[tuple[str, datetime]]) -> None:
    with db.session() as s:
        for file_id, created in stamps:
            s.add(
                StoredFile(
                    id=file_id,
                    tenant_id=tenant_id,
                    filename="f.jsonl",
                    purpose="fine-tune",
                    bytes=1,
                    kind="sft",
                    line_count=1,
                    storage_key=file_id,
                    sha256="0" * 64,
                    created_at=created,
                )
            )


@pytest.mark.parametrize("written", [WHEN, WHEN.astimezone(EAST), WHEN.replace(tzinfo=None)])
def test_datetimes_read_back_as_the_same_instant_in_utc(db: Database, written: datetime) -> None:
    # An aware time in another zone keeps its instant (SQLite stores no offset); a naive one is UTC.
    _tenant(db, "t1", written)
    with db.session() as s:
        read = s.scalar(select(Tenant.created_at).where(Tenant.id == "t1"))
        # A bound value in another zone compares as the same instant.
        found = s.scalar(select(Tenant.id).where(Tenant.created_at == WHEN.astimezone(EAST)))
    assert read == WHEN and read.tzinfo is timezone.utc
    assert found == "t1"


def test_from_row_takes_same_named_attributes_and_overrides(db: Database) -> None:
    _tenant(db, "t1", WHEN)
    with db.session() as s:
        row = s.get(Tenant, "t1")
        assert from_row(Named, row) == Named(id="t1", name="t1", created_at=WHEN)
        assert from_row(Named, row, name="other").name == "other"


def test_owned_is_none_for_foreign_unknown_and_impossible_ids(db: Database) -> None:
    for tenant_id in ("t1", "t2"):
        _tenant(db, tenant_id, WHEN)
    _files(db, "t1", [("f1", WHEN)])
    with db.session() as s:
        assert owned(s, StoredFile, "f1", "t1") is not None
        assert owned(s, StoredFile, "f1", "t2") is None
        assert owned(s, StoredFile, "nope", "t1") is None
        assert owned(s, StoredFile, "f" * 41, "t1") is None
        assert owned(s, StoredFile, 7, "t1") is None


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_keyset_pages_cover_the_list_once_with_ties_broken_by_id(db: Database, order: str) -> None:
    _tenant(db, "t1", WHEN)
    # Three share a timestamp: the id decides their order.
    stamps = [("f1", WHEN), ("f3", WHEN), ("f2", WHEN), ("f4", WHEN + timedelta(1)), ("f0", WHEN - timedelta(1))]
    _files(db, "t1", stamps)
    expected = ["f0", "f1", "f2", "f3", "f4"]
    if order == "desc":
        expected.reverse()
    seen: list[str] = []
    after: str | None = None
    with db.session() as s:
        while True:
            page = keyset_page(
                s,
                select(StoredFile),
                (StoredFile.created_at, StoredFile.id),
                after=after,
                find=lambda file_id: s.get(StoredFile, file_id),
                unknown="unknown",
                limit=2,
                order=order,  # type: ignore[arg-type]
            ).map(lambda f: f.id)
            seen += page.items
            if not page.has_more:
                break
            after = page.items[-1]
        with pytest.raises(TailorError) as refused:
            keyset_page(s, select(StoredFile), (StoredFile.id,), after="f9", find=lambda _: None, unknown="no", limit=2)
    assert seen == expected
    assert (refused.value.status, refused.value.param, refused.value.message) == (400, "after", "no")


def test_list_page_continues_after_the_named_item() -> None:
    items = ["a", "b", "c"]
    assert list_page(items, key=str, after=None, limit=2, unknown="x") == Page(items=["a", "b"], has_more=True)
    assert list_page(items, key=str, after="b", limit=2, unknown="x") == Page(items=["c"], has_more=False)
    with pytest.raises(TailorError) as refused:
        list_page(items, key=str, after="z", limit=2, unknown="no such item")
    assert (refused.value.param, refused.value.message) == ("after", "no such item")
