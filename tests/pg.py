"""A throwaway PostgreSQL cluster for tests: `from tests.pg import postgres_url  # noqa: F401`.

Started once per test session from the server binaries (initdb, pg_ctl) in a temporary
directory on a free port, stopped and deleted at the end. PostgreSQL refuses to run as
root, so as root the cluster is created and run as the `postgres` user via `runuser`.
Tests that need it are skipped, with the reason, where the binaries or that user are
missing. `TAILOR_PG_BIN` names another directory of server binaries.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("TAILOR_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "tailor"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _runner() -> tuple[list[str], pwd.struct_passwd | None]:
    """The command prefix that runs the server binaries, and the OS user they run as."""
    if os.geteuid() != 0:
        return [], None
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no 'postgres' OS user to run PostgreSQL as")
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root and `runuser` is missing: cannot start PostgreSQL as 'postgres'")
    return [runuser, "-u", "postgres", "--"], owner


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL (psycopg 3) of the `postgres` database of a new cluster (superuser tailor)."""
    initdb, pg_ctl = PG_BIN / "initdb", PG_BIN / "pg_ctl"
    if not (initdb.is_file() and pg_ctl.is_file()):
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN} (set TAILOR_PG_BIN)")
    prefix, owner = _runner()

    # Not under pytest's tmp_path: that lives in a root-only directory `postgres` cannot enter.
    root = Path(tempfile.mkdtemp(prefix="tailor-pg-"))
    data, log = root / "data", root / "server.log"
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    os.chmod(root, 0o700)
    started = False
    try:
        _run(
            [
                *prefix,
                str(initdb),
                "-D",
                str(data),
                "-U",
                PG_USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        error: Exception | None = None
        for _ in range(3):  # a port found free can be taken before the server binds it
            port = _free_port()
            opts = (
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            try:
                _run(
                    [
                        *prefix,
                        str(pg_ctl),
                        "-D",
                        str(data),
                        "-l",
                        str(log),
                        "-o",
                        opts,
                        "-w",
                        "-t",
                        "60",
                        "start",
                    ]
                )
            except RuntimeError as exc:
                error = exc
                continue
            started = True
            break
        if not started:
            server_log = log.read_text() if log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {error}\n{server_log}")
        yield f"postgresql+psycopg://{PG_USER}@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run(
                [*prefix, str(pg_ctl), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)


def create_database(server_url: str, prefix: str = "t") -> str:
    """A new empty database on the cluster of `server_url`; returns its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)
