"""`tailor files from-stored`: a fine-tune file from a tenant's stored completions, through
typer's CliRunner (Settings from the environment, TAILOR_DATA_DIR at tmp_path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.blobs import BlobStore
from core.config import Settings
from tests.dbutil import add_interaction
from tests.gateway.cli_world import Cli, isolated_cli
from trainer import files

QUESTION = [{"role": "user", "content": "Capital of France?"}]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    c = isolated_cli(tmp_path, monkeypatch)
    for name in ("acme", "beta"):
        c.ok("tenants", "create", name)
    return c


def store(cli: Cli, tenant: str, **fields: object) -> str:
    db = cli.db()
    try:
        tenant_id = next(t["id"] for t in cli.json("tenants", "list") if t["name"] == tenant)
        row = {
            "model": "teacher",
            "request": {"messages": QUESTION},
            "response_text": "Paris.",
            "finish_reason": "stop",
            "stored": True,
            "stored_metadata": {"task": "geo"},
            **fields,
        }
        return add_interaction(db, tenant_id, **row)
    finally:
        db.dispose()


def test_from_stored_writes_a_fine_tune_file_of_the_filter(cli: Cli) -> None:
    store(cli, "acme")
    store(cli, "acme", response_text="Paris!")
    store(cli, "acme", finish_reason="length")
    store(cli, "acme", stored_metadata={"task": "math"})
    store(cli, "acme", model="student")
    store(cli, "beta")
    out = cli.json("files", "from-stored", "acme", "--model", "teacher", "--metadata", "task=geo")
    assert (out["examples"], out["skipped"], out["file"]["purpose"], out["file"]["kind"]) == (2, 1, "fine-tune", "sft")
    db = cli.db()
    try:
        tenant_id = out["file"]["tenant_id"]
        data = files.file_content(db, BlobStore(Settings().blob_store_url or ""), tenant_id, out["file"]["id"])
    finally:
        db.dispose()
    answers = [r.answer for r in files.parse_jsonl(data).records]
    assert answers == ["Paris.", "Paris!"]
    text = cli.ok("files", "from-stored", "beta", "--filename", "b.jsonl").stdout
    assert "(b.jsonl): 1 examples, 0 stored completions skipped" in text


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["acme", "--metadata", "task"], "expected KEY=VALUE"),
        (["acme", "--metadata", "k" * 65 + "=v"], "longer than 64"),
        (["acme", "--metadata", "task=nothing"], "No training examples"),
        (["nobody"], "nobody"),
    ],
)
def test_from_stored_refusals(cli: Cli, args: list[str], says: str) -> None:
    store(cli, "acme")
    assert says in cli.fails("files", "from-stored", *args).stderr
