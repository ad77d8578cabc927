"""Database access: engine, sessions and migrations (SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, Select, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from core.config import Settings

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

T = TypeVar("T")


def _ensure_sqlite_dir(url: str) -> None:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def make_engine(url: str) -> Engine:
    _ensure_sqlite_dir(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets the gateway read while the log writer and trainer write; the busy timeout
    # turns brief writer contention into a wait instead of "database is locked".
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def lock_row(session: Session, statement: Select[tuple[T]]) -> T | None:
    """The row `statement` selects, read fresh and locked until the session's transaction ends.

    Call it first in a read-decide-write transaction: whoever else locks the same row waits
    for this transaction to commit, then reads what it wrote. PostgreSQL locks the row with
    SELECT ... FOR UPDATE. SQLite has no row locks, so the transaction takes the database's
    write lock up front (BEGIN IMMEDIATE), which waits out the busy timeout rather than
    failing.
    """
    if session.get_bind().dialect.name == "sqlite":
        _begin_immediate(session)
    # populate_existing: an object this session loaded before the lock is overwritten with
    # what the database holds now, instead of the identity map handing back the stale copy.
    return session.scalar(statement.with_for_update().execution_options(populate_existing=True))


def _begin_immediate(session: Session) -> None:
    # sqlite3's legacy transaction control (the default SQLAlchemy keeps) sends no BEGIN
    # before a SELECT, so a transaction that only read so far has not begun in SQLite and
    # may begin here, with the write lock. One that already wrote holds the write lock.
    driver: Any = session.connection().connection.driver_connection
    if not driver.in_transaction:
        session.connection().exec_driver_sql("BEGIN IMMEDIATE")


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's config is ConfigParser-based: a literal % in a password must be doubled.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str) -> None:
    """Bring the schema to the newest migration (idempotent, safe to run at every start)."""
    _ensure_sqlite_dir(url)
    command.upgrade(alembic_config(url), "head")


class Database:
    """One engine and its session factory; pass it around instead of a global."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(settings.database_url or "")

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
