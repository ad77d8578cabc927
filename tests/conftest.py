"""Fixtures for every test directory.

`db`: a migrated database, once on SQLite in tmp_path and once on a fresh PostgreSQL
database (marked `postgres`; skipped where no cluster can start). `sqlite_db`: the SQLite
one alone. `postgres_url`: the session's throwaway PostgreSQL cluster (tests/pg.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.db import Database
from tests.dbutil import open_migrated, sqlite_url
from tests.pg import create_database, postgres_url  # noqa: F401

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated database on SQLite, and again on PostgreSQL."""
    if request.param == "sqlite":
        url = sqlite_url(tmp_path)
    else:
        url = create_database(request.getfixturevalue("postgres_url"), "t")
    with open_migrated(url) as database:
        yield database


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    """A migrated SQLite database in tmp_path."""
    with open_migrated(sqlite_url(tmp_path)) as database:
        yield database
