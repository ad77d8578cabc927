"""A throwaway PostgreSQL cluster from the server binaries (initdb, pg_ctl): for the test suite
(tests/pg.py) and the cluster rehearsal (loadtests.rehearsal).

The cluster lives in a temporary directory on a free loopback port, trusts local connections
(superuser `tailor`, no password) and runs without fsync: it is for tests, never for data.
PostgreSQL refuses to run as root, so as root it is created and run as the `postgres` user via
`runuser`. `TAILOR_PG_BIN` names another directory of server binaries.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from adapters.ports import pick_free_port

PG_BIN = Path(os.environ.get("TAILOR_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "tailor"


class Unavailable(RuntimeError):
    """PostgreSQL cannot run here (no server binaries, or no user to run them as)."""


def _runner() -> tuple[list[str], pwd.struct_passwd | None]:
    """The command prefix that runs the server binaries, and the OS user they run as."""
    if os.geteuid() != 0:
        return [], None
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        raise Unavailable("running as root and there is no 'postgres' OS user to run PostgreSQL as") from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise Unavailable("running as root and `runuser` is missing: cannot start PostgreSQL as 'postgres'")
    return [runuser, "-u", "postgres", "--"], owner


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


@dataclass
class Cluster:
    """A running cluster; `url` is SQLAlchemy's (psycopg 3) for its `postgres` database."""

    root: Path
    port: int
    prefix: list[str]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        _run([*self.prefix, str(PG_BIN / "pg_ctl"), "-D", str(self.root / "data"), *args])

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._ctl("-l", str(self.root / "server.log"), "-o", opts, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` ends sessions cleanly, `immediate` as a crash would."""
        self._ctl("-m", mode, "-w", "stop")

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text() if path.exists() else ""


@contextlib.contextmanager
def running_cluster() -> Iterator[Cluster]:
    """A new cluster, started; stopped and deleted on leaving. Unavailable where it cannot run."""
    if not ((PG_BIN / "initdb").is_file() and (PG_BIN / "pg_ctl").is_file()):
        raise Unavailable(f"PostgreSQL server binaries not found in {PG_BIN} (set TAILOR_PG_BIN)")
    prefix, owner = _runner()
    # Not under a root-only directory (pytest's tmp_path): `postgres` must enter it.
    root = Path(tempfile.mkdtemp(prefix="tailor-pg-"))
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    os.chmod(root, 0o700)
    cluster: Cluster | None = None
    try:
        initdb = [str(PG_BIN / "initdb"), "-D", str(root / "data"), "-U", PG_USER, "--auth=trust"]
        _run([*prefix, *initdb, "-E", "UTF8", "--locale=C", "--no-sync"])
        error: Exception | None = None
        for _ in range(3):  # a port found free can be taken before the server binds it
            candidate = Cluster(root, pick_free_port("127.0.0.1"), prefix)
            try:
                candidate.start()
            except RuntimeError as exc:
                error = exc
                continue
            cluster = candidate
            break
        if cluster is None:
            raise RuntimeError(f"PostgreSQL did not start: {error}\n{Cluster(root, 0, prefix).log()}")
        yield cluster
    finally:
        if cluster is not None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def create_database(server_url: str, prefix: str = "t") -> str:
    """A new empty database on the cluster of `server_url`; returns its URL."""
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)
