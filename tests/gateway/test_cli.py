"""The `tailor` CLI (gateway/cli/) through typer's CliRunner: tenants, keys, adapters
(directory and archive registration, activate, rollback, canary, lineage) and `train`.

Each call reads Settings from the environment, as the real command does: TAILOR_DATA_DIR
points at tmp_path and TAILOR_BASE_MODEL_PATH at a tiny Llama config.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from core.ids import KEY_PREFIX, new_id
from core.models import ApiKey, Feedback, Job
from tests.adapters.test_validation import tiny_config, write_adapter
from tests.gateway.cli_world import Cli, isolated_cli


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    return isolated_cli(tmp_path, monkeypatch, base_model=True)


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_adapter(tmp_path_factory.mktemp("cli-adapter") / "lora")


@pytest.fixture(scope="module")
def adapter_archive(adapter_dir: Path) -> Path:
    archive = adapter_dir.parent / "lora.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for f in adapter_dir.iterdir():
            tar.add(f, arcname=f.name)
    return archive


# --- help ------------------------------------------------------------------------------


def test_help_lists_the_commands(cli: Cli) -> None:
    out = cli.ok("--help").stdout
    for command in ("serve", "train", "migrate", "tenants", "keys", "adapters", "prepare-model", "derive-model"):
        assert command in out, command
    adapters = cli.ok("adapters", "--help").stdout
    for command in ("register", "list", "activate", "rollback", "canary", "lineage"):
        assert command in adapters, command


def test_migrate(cli: Cli) -> None:
    assert "up to date" in cli.ok("migrate").stdout
    assert (cli.data / "tailor.db").exists()


def test_a_fresh_data_dir_is_created(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = cli.tmp / "fresh" / "data"
    monkeypatch.setenv("TAILOR_DATA_DIR", str(fresh))
    result = cli("tenants", "create", "acme")
    assert result.exit_code == 0, result.exception
    assert (fresh / "tailor.db").exists()
    # `migrate` on its own creates the directory too.
    fresher = cli.tmp / "fresher" / "data"
    monkeypatch.setenv("TAILOR_DATA_DIR", str(fresher))
    assert "up to date" in cli.ok("migrate").stdout
    assert (fresher / "tailor.db").exists()


# --- tenants ---------------------------------------------------------------------------


def test_tenants_create_list_delete(cli: Cli) -> None:
    assert "created tenant acme (ten-" in cli.ok("tenants", "create", "acme").stdout
    beta = cli.json("tenants", "create", "beta")
    assert beta["name"] == "beta" and beta["id"].startswith("ten-") and beta["created_at"]

    rows = cli.json("tenants", "list")
    assert [t["name"] for t in rows] == ["acme", "beta"]
    assert beta["id"] in cli.ok("tenants", "list").stdout

    # Without --yes it asks; "n" keeps the tenant.
    declined = cli("tenants", "delete", "acme", input="n\n")
    assert declined.exit_code != 0
    assert [t["name"] for t in cli.json("tenants", "list")] == ["acme", "beta"]

    assert "deleted tenant acme" in cli.ok("tenants", "delete", "acme", "--yes").stdout
    cli.ok("tenants", "delete", beta["id"], "--yes")  # by id too
    assert cli.json("tenants", "list") == []
    assert cli.ok("tenants", "list").stdout.strip() == "no tenants"


def test_tenant_errors_exit_non_zero_with_a_message(cli: Cli) -> None:
    cli.ok("tenants", "create", "acme")
    dup = cli.fails("tenants", "create", "acme")
    assert dup.stderr.strip() == "error: Tenant 'acme' already exists."
    assert dup.stdout == ""
    bad = cli.fails("tenants", "create", "Not A Name")
    assert bad.stderr.startswith("error: Invalid tenant name")
    gone = cli.fails("tenants", "delete", "nobody", "--yes")
    assert gone.stderr.strip() == "error: No tenant 'nobody'."
    assert [t["name"] for t in cli.json("tenants", "list")] == ["acme"]


# --- keys ------------------------------------------------------------------------------


def test_keys_create_prints_the_secret_once_and_stores_only_its_hash(cli: Cli) -> None:
    cli.ok("tenants", "create", "acme")
    created = cli.json("keys", "create", "acme", "--name", "ci")
    secret = created["key"]
    assert created["name"] == "ci" and created["id"].startswith("key-") and created["revoked_at"] is None

    db = cli.db()
    with db.session() as s:
        (row,) = s.scalars(select(ApiKey)).all()
        assert row.id == created["id"]
        assert row.key_hash == hashlib.sha256(secret.encode()).hexdigest()
        stored = [str(getattr(row, c.key)) for c in ApiKey.__table__.columns]
    db.dispose()
    assert not any(secret in value for value in stored)
    assert created["hint"] == row.hint and created["hint"] != secret

    # Listing never shows the secret again.
    listed = cli.json("keys", "list", "acme")
    assert [k["id"] for k in listed] == [created["id"]]
    assert "key" not in listed[0]
    assert secret not in cli.ok("keys", "list", "acme").stdout
    assert secret not in cli.ok("keys", "list", "acme", "--json").stdout

    # Text mode: the secret alone on the first line, then a reminder.
    text = cli.ok("keys", "create", "acme").stdout
    second = text.splitlines()[0].strip()
    assert "store it now" in text and second.startswith(KEY_PREFIX) and second != secret
    db = cli.db()
    with db.session() as s:
        hashes = set(s.scalars(select(ApiKey.key_hash)))
    db.dispose()
    assert hashes == {hashlib.sha256(k.encode()).hexdigest() for k in (secret, second)}


def test_keys_revoke(cli: Cli) -> None:
    cli.ok("tenants", "create", "acme")
    first = cli.json("keys", "create", "acme")
    second = cli.json("keys", "create", "acme")
    revoked = cli.json("keys", "revoke", first["id"])
    assert revoked["id"] == first["id"] and revoked["revoked_at"] is not None
    again = cli.json("keys", "revoke", first["id"])  # idempotent: the first revocation time stays
    assert again["revoked_at"] == revoked["revoked_at"]

    state = {k["id"]: k["revoked_at"] for k in cli.json("keys", "list", "acme")}
    assert state[first["id"]] is not None and state[second["id"]] is None
    text = cli.ok("keys", "list", "acme").stdout
    assert f"{first['id']}" in text and "revoked" in text and "active" in text

    assert cli.fails("keys", "revoke", "key-nope").stderr.strip() == "error: No key 'key-nope'."
    assert cli.fails("keys", "list", "nobody").stderr.strip() == "error: No tenant 'nobody'."
    assert cli.fails("keys", "create", "nobody").stderr.strip() == "error: No tenant 'nobody'."


# --- adapters --------------------------------------------------------------------------


def test_adapters_register_list_activate_rollback_canary_lineage(
    cli: Cli, adapter_dir: Path, adapter_archive: Path
) -> None:
    cli.ok("tenants", "create", "acme")
    assert cli.ok("adapters", "list", "acme").stdout.strip() == "no adapters"

    v1 = cli.json("adapters", "register", "acme", "support", str(adapter_dir))
    assert (v1["adapter_name"], v1["version"], v1["rank"], v1["active"], v1["source"]) == (
        "support",
        1,
        4,
        True,
        "path",
    )
    assert len(v1["digest"]) == 64
    text = cli.ok("adapters", "register", "acme", "support", str(adapter_archive)).stdout
    assert text.startswith("registered acme/support version 2 (rank 4, ")

    (info,) = cli.json("adapters", "list", "acme")
    assert (info["name"], info["active_version"]) == ("support", 2)
    assert [(v["version"], v["state"]) for v in info["versions"]] == [(1, "retired"), (2, "active")]
    assert info["versions"][0]["digest"] == info["versions"][1]["digest"]  # same files, one stored copy
    assert "support  active=v2  versions=2" in cli.ok("adapters", "list", "acme").stdout

    back = cli.json("adapters", "rollback", "acme", "support")
    assert back["active_version"] == 1
    assert [(v["version"], v["state"]) for v in back["versions"]] == [(1, "active"), (2, "rolled_back")]
    nothing_left = cli.fails("adapters", "rollback", "acme", "support")
    assert "no earlier promoted version" in nothing_left.stderr

    assert "acme/support now serves version 2" in cli.ok("adapters", "activate", "acme", "support", "2").stdout

    canary = cli.json("adapters", "canary", "acme", "support", "1", "--fraction", "0.25")
    assert (canary["active_version"], canary["canary_version"], canary["canary_fraction"]) == (2, 1, 0.25)

    lineage = cli.json("adapters", "lineage", "acme", "support")
    assert [(r["version"], r["state"], r["serving"]) for r in lineage] == [
        (1, "canary", "canary"),
        (2, "active", "active"),
    ]
    assert lineage[1]["promoted_by"] == "cli" and lineage[1]["promoted_at"]
    assert lineage[0]["source"] == "path" and lineage[1]["source"] == "upload"
    assert "v2  active" in cli.ok("adapters", "lineage", "acme", "support").stdout

    stopped = cli.json("adapters", "canary", "acme", "support", "1", "--fraction", "0")
    assert (stopped["canary_version"], stopped["canary_fraction"]) == (None, 0.0)


def test_register_without_activation(cli: Cli, adapter_dir: Path) -> None:
    cli.ok("tenants", "create", "acme")
    cli.ok("adapters", "register", "acme", "support", str(adapter_dir))
    v2 = cli.json("adapters", "register", "acme", "support", str(adapter_dir), "--no-activate")
    assert (v2["version"], v2["state"], v2["active"]) == (2, "registered", False)
    assert cli.json("adapters", "list", "acme")[0]["active_version"] == 1


def test_register_archive_without_activation(cli: Cli, adapter_dir: Path, adapter_archive: Path) -> None:
    cli.ok("tenants", "create", "acme")
    cli.ok("adapters", "register", "acme", "support", str(adapter_dir))
    v2 = cli.json("adapters", "register", "acme", "support", str(adapter_archive), "--no-activate")
    assert (v2["version"], v2["state"], v2["active"], v2["source"]) == (2, "registered", False, "upload")
    assert cli.json("adapters", "list", "acme")[0]["active_version"] == 1


def test_adapter_errors_exit_non_zero_with_a_message(
    cli: Cli, adapter_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAILOR_BASE_MODEL_NAME", "tiny-llama")
    cli.ok("tenants", "create", "acme")
    assert cli.fails("adapters", "register", "nobody", "x", str(adapter_dir)).stderr.strip() == (
        "error: No tenant 'nobody'."
    )
    too_big = write_adapter(tmp_path / "r64", r=64)
    assert cli.fails("adapters", "register", "acme", "big", str(too_big)).stderr.startswith("error: ")
    bad_name = cli.fails("adapters", "register", "acme", "Bad Name!", str(adapter_dir))
    assert bad_name.stderr.startswith("error: ")
    base_name = cli.fails("adapters", "register", "acme", "tiny-llama", str(adapter_dir))
    assert "base model" in base_name.stderr
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive")
    assert cli.fails("adapters", "register", "acme", "support", str(junk)).stderr.startswith("error: ")
    assert cli.json("adapters", "list", "acme") == []

    unknown = cli.fails("adapters", "activate", "acme", "ghost", "1")
    assert "ghost" in unknown.stderr and unknown.stderr.startswith("error: ")
    cli.ok("adapters", "register", "acme", "support", str(adapter_dir))
    assert "no version 9" in cli.fails("adapters", "activate", "acme", "support", "9").stderr
    assert cli.fails("adapters", "canary", "acme", "support", "1").stderr.startswith("error: ")  # already active
    assert cli.fails("adapters", "lineage", "acme", "ghost").stderr.startswith("error: ")
    assert cli.fails("adapters", "list", "nobody").stderr.strip() == "error: No tenant 'nobody'."


def test_deleting_a_tenant_with_adapters(cli: Cli, adapter_dir: Path) -> None:
    cli.ok("tenants", "create", "acme")
    cli.ok("adapters", "register", "acme", "support", str(adapter_dir))
    cli.ok("adapters", "register", "acme", "support", str(adapter_dir))
    cli.ok("tenants", "delete", "acme", "--yes")
    cli.ok("tenants", "create", "acme")
    assert cli.json("adapters", "list", "acme") == []


# --- train -----------------------------------------------------------------------------


def test_train_needs_from_feedback(cli: Cli) -> None:
    cli.ok("tenants", "create", "acme")
    result = cli.fails("train", "acme", code=2)
    assert "--from-feedback" in result.stderr
    assert cli.fails("train", "nobody", "--from-feedback").stderr.strip() == "error: No tenant 'nobody'."


def add_feedback(cli: Cli, tenant_id: str, n: int, **fields: Any) -> None:
    """`n` imported feedback rows (a user prompt each) with the given fields."""
    db = cli.db()
    with db.session() as s:
        for i in range(n):
            s.add(
                Feedback(
                    id=new_id("fb"),
                    tenant_id=tenant_id,
                    messages=[{"role": "user", "content": f"Question {i}?"}],
                    source="import",
                    **fields,
                )
            )
    db.dispose()


def jobs_in(cli: Cli) -> list[Job]:
    db = cli.db()
    with db.session() as s:
        rows = list(s.scalars(select(Job)))
    db.dispose()
    return rows


def test_train_from_feedback_queues_a_job(cli: Cli) -> None:
    tenant = cli.json("tenants", "create", "acme")
    add_feedback(cli, tenant["id"], 5, correction="Hello!")
    job = cli.json("train", "acme", "--from-feedback", "--adapter", "support", "--max-steps", "3")
    assert (job["status"], job["adapter_name"], job["method"]) == ("queued", "support", "supervised")
    assert job["dataset_id"]  # the snapshot was built here, before queueing
    (row,) = jobs_in(cli)
    assert row.id == job["id"] and row.dataset_id == job["dataset_id"]
    assert row.source == "feedback" and row.hyperparameters.get("max_steps") == 3


def test_train_from_feedback_trains_on_the_base_the_adapter_serves_on(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, adapter_dir: Path
) -> None:
    for name in ("big", "small"):
        (cli.tmp / name).mkdir()
        (cli.tmp / name / "config.json").write_text(json.dumps(tiny_config()))
    monkeypatch.delenv("TAILOR_BASE_MODEL_PATH")
    bases = {"big": {"path": str(cli.tmp / "big")}, "small": {"path": str(cli.tmp / "small")}}
    monkeypatch.setenv("TAILOR_BASE_MODELS", json.dumps(bases))
    tenant = cli.json("tenants", "create", "acme")
    cli.ok("adapters", "register", "acme", "support", str(adapter_dir), "--base-model", "small")
    add_feedback(cli, tenant["id"], 5, correction="Hello!")
    cli.json("train", "acme", "--from-feedback", "--adapter", "support")
    (row,) = jobs_in(cli)
    # Not the default base: the retrained adapter's weights must fit the base it serves on.
    assert row.model == "small" and (row.config or {}).get("base_model") == "small"


def test_train_from_feedback_without_feedback_fails_clearly(cli: Cli) -> None:
    tenant = cli.json("tenants", "create", "acme")
    result = cli.fails("train", "acme", "--from-feedback")
    assert result.stderr.startswith("error: No usable feedback"), result.stderr
    assert result.stdout == ""

    # Feedback that teaches nothing (bad ratings, no correction) is no usable feedback either.
    add_feedback(cli, tenant["id"], 3, rating="bad")
    assert cli.fails("train", "acme", "--from-feedback").stderr.startswith("error: No usable feedback")

    # Chat examples but no preference pairs: fine for supervised, refused for dpo.
    add_feedback(cli, tenant["id"], 5, correction="Hello!")
    dpo = cli.fails("train", "acme", "--from-feedback", "--method", "dpo")
    assert dpo.stderr.startswith("error: ") and "preference pairs" in dpo.stderr, dpo.stderr
    assert jobs_in(cli) == []  # nothing was queued by any refusal
