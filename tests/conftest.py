"""Fixtures for every test directory.

`db`: a migrated database, once on SQLite in tmp_path and once on a fresh PostgreSQL
database (marked `postgres`; skipped where no cluster can start). `sqlite_db`: the SQLite
one alone. `postgres_url`: the session's throwaway PostgreSQL cluster (tests/pg.py).
`eval_engine`: the session's evaluation engine, a real vLLM child started the way a
trainer worker starts its own (trainer.compute.engine.OwnEngine); `live_engine(settings)`
starts one so for a test's own settings.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from core.db import Database
from tests.dbutil import open_migrated, sqlite_url
from tests.pg import create_database, postgres_url  # noqa: F401

if TYPE_CHECKING:
    from core.config import Settings
    from trainer.compute.engine import EngineClient

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "SmolLM2-135M-Instruct"
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


@dataclass(frozen=True)
class LiveEngine:
    client: EngineClient
    url: str
    key: str

    def served_adapters(self) -> set[str]:
        """Every adapter that has run a request on the engine: vLLM's /metrics keeps one
        `vllm:lora_requests_info` series per set of running adapters it has seen."""
        text = self.client.http.get("/metrics").text
        found = re.findall(r'^vllm:lora_requests_info\{[^}]*running_lora_adapters="([^"]*)"', text, re.MULTILINE)
        return {name for names in found for name in names.split(",") if name}


@pytest.fixture(scope="session")
def eval_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveEngine]:
    """One vLLM engine for every test that evaluates: trainer workers here name it as their
    TAILOR_EVAL_ENGINE_URL (a test that evaluates on the serving engine could kill it)."""
    if not (MODEL_DIR / "config.json").exists():
        pytest.skip(f"base model not prepared at {MODEL_DIR} (run `make install`)")
    from core.config import Settings

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("eval-engine"),
        base_model_path=MODEL_DIR,
        engine_kv_cache_gib=1,
        engine_max_loras=2,
        max_resident_adapters=4,
        # vLLM's tool flags change nothing for requests without tools; with them this engine
        # also serves the tool tests' gateway that has a parser, which then starts no engine.
        engine_tool_call_parser="hermes",
    )
    with live_engine(settings) as engine:
        yield engine


@contextmanager
def live_engine(settings: Settings) -> Iterator[LiveEngine]:
    """A vLLM engine for `settings`, started as a trainer worker starts its own
    (trainer.compute.engine.OwnEngine) and stopped on leaving."""
    from trainer.compute.engine import OwnEngine

    own = OwnEngine(settings)
    client = own.start()
    try:
        yield LiveEngine(client, own.launch.url, own.key)
    finally:
        client.close()
        own.stop()
