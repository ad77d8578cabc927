"""Migrated test databases: the helpers behind the `db` and `sqlite_db` fixtures of
tests/conftest.py, for tests that build a database themselves."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.db import Database, migrate
from core.ids import new_id
from core.models import Interaction


def sqlite_url(directory: Path, name: str = "t.db") -> str:
    return f"sqlite:///{directory / name}"


def migrated(url: str) -> Database:
    """A Database on `url`, migrated to the newest schema first."""
    migrate(url)
    return Database(url)


@contextmanager
def open_migrated(url: str) -> Iterator[Database]:
    """`migrated(url)`, disposed of on the way out."""
    database = migrated(url)
    try:
        yield database
    finally:
        database.dispose()


def add_interaction(db: Database, tenant_id: str, **fields: Any) -> str:
    """Insert one logged request of `tenant_id` (a chat completion answered 200 with an empty
    request body, unless `fields` say otherwise); returns its new id."""
    iid = new_id("chatcmpl")
    row = {"endpoint": "chat.completions", "request": {}, "status_code": 200, **fields}
    with db.session() as s:
        s.add(Interaction(id=iid, tenant_id=tenant_id, **row))
    return iid
