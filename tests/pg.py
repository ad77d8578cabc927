"""A throwaway PostgreSQL cluster for tests: `from tests.pg import postgres_url  # noqa: F401`.

Started once per test session (loadtests.pg_cluster), stopped and deleted at the end. Tests
that need it are skipped, with the reason, where PostgreSQL cannot run here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from loadtests.pg_cluster import Unavailable, create_database, running_cluster

__all__ = ["create_database", "postgres_url"]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL (psycopg 3) of the `postgres` database of a new cluster (superuser tailor)."""
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(running_cluster())
        except Unavailable as exc:
            pytest.skip(str(exc))
        yield cluster.url
