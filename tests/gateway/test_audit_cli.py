"""What the `tailor` CLI does to tenants, keys, adapters and jobs, in the audit log: one
event per change, by `cli:<OS user>`; failed commands append nothing."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import pytest

from gateway import audit
from tests.adapters.test_validation import write_adapter
from tests.gateway.cli_world import Cli, isolated_cli
from tests.gateway.test_audit import add_feedback


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_adapter(tmp_path_factory.mktemp("audit-adapter") / "lora")


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setattr(getpass, "getuser", lambda: "alice")
    return isolated_cli(tmp_path, monkeypatch, base_model=True)


class CliLog:
    """The events the CLI appended, read straight from its database."""

    def __init__(self, cli: Cli) -> None:
        self.cli = cli
        self.seen = 0

    def new(self) -> list[audit.Event]:
        db = self.cli.db()
        try:
            events = list(reversed(audit.query(db, audit.Filter(), limit=1000).events))
        finally:
            db.dispose()
        fresh = [e for e in events if e.id > self.seen]
        if fresh:
            self.seen = fresh[-1].id
        return fresh

    def one(self, action: str) -> audit.Event:
        fresh = self.new()
        assert [e.action for e in fresh] == [action], fresh
        assert fresh[0].actor == "cli:alice"
        return fresh[0]


def test_cli_actions(cli: Cli, adapter_dir: Path, tmp_path: Path) -> None:
    log = CliLog(cli)
    tenant = cli.json("tenants", "create", "acme")
    event = log.one("tenant.create")
    assert (event.tenant_id, event.target, event.after) == (tenant["id"], "acme", {"id": tenant["id"], "name": "acme"})

    key = cli.json("keys", "create", "acme", "--name", "ci")
    event = log.one("key.create")
    assert event.target == key["id"] and event.after is not None and event.after["hint"] == key["hint"]
    assert key["key"] not in json.dumps(event.after)
    rotated = cli.json("keys", "rotate", key["id"])
    event = log.one("key.rotate")
    assert event.target == key["id"] and event.after is not None
    assert event.after["new_key"]["id"] == rotated["id"] and event.after["old_key"]["revoked_at"] is not None
    assert rotated["key"] not in json.dumps(event.after)
    cli.json("keys", "revoke", rotated["id"])
    assert log.one("key.revoke").target == rotated["id"]

    cli.json("adapters", "register", "acme", "support", str(adapter_dir))
    event = log.one("adapter.register")
    assert event.before is None and event.after is not None
    assert event.after["active_version"] == 1 and event.after["version"]["source"] == "path"
    cli.json("adapters", "register", "acme", "support", str(adapter_dir))
    assert log.one("adapter.register").after["active_version"] == 2  # type: ignore[index]
    cli.json("adapters", "activate", "acme", "support", "1")
    event = log.one("adapter.promote")
    assert (event.before or {})["active_version"] == 2 and (event.after or {})["active_version"] == 1
    cli.json("adapters", "rollback", "acme", "support")
    assert (log.one("adapter.rollback").after or {})["active_version"] == 2
    cli.json("adapters", "canary", "acme", "support", "1", "--fraction", "0.3")
    assert (log.one("adapter.canary.start").after or {})["canary_fraction"] == 0.3
    cli.json("adapters", "canary", "acme", "support", "1", "--fraction", "0")
    assert (log.one("adapter.canary.stop").after or {})["canary_version"] is None

    # failures append nothing
    cli.fails("adapters", "rollback", "acme", "ghost")
    cli.fails("adapters", "activate", "acme", "support", "9")
    cli.fails("keys", "revoke", "key-nope")
    cli.fails("tenants", "create", "acme")
    cli.fails("train", "acme", "--from-feedback")  # no feedback yet
    assert log.new() == []

    db = cli.db()
    add_feedback(db, tenant["id"])
    db.dispose()
    job = cli.json("train", "acme", "--from-feedback", "--adapter", "helper")
    event = log.one("job.create")
    assert event.target == job["id"] and (event.after or {})["source"] == "feedback"

    inputs = tmp_path / "q.txt"
    inputs.write_text("Where is my order?\nCan I pay by card?\n")
    prompt = tmp_path / "p.md"
    prompt.write_text("You are terse.\n")
    args = ("distill", "acme", "--adapter", "lite", "--inputs", str(inputs), "--system-prompt-file", str(prompt))
    job = cli.json(*args)
    event = log.one("job.create")
    assert event.target == job["id"] and (event.after or {})["method"] == "distillation"

    cli.ok("tenants", "delete", "acme", "--yes")
    event = log.one("tenant.delete")
    assert event.before == {"id": tenant["id"], "name": "acme"}


def test_cli_actor_without_a_login_name(monkeypatch: pytest.MonkeyPatch) -> None:
    def nobody() -> str:
        raise OSError("no username")

    monkeypatch.setattr(getpass, "getuser", nobody)
    assert audit.actor_for_cli() == "cli:unknown"
    monkeypatch.setattr(getpass, "getuser", lambda: "bob")
    assert audit.actor_for_cli() == "cli:bob"
