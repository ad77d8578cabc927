"""Key rotation: a new secret for the same tenant; the old one ends now or after a grace period."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from core.db import Database
from core.errors import TailorError
from core.ids import utcnow
from gateway import tenants
from gateway.cli import app as cli
from tests.apputil import ADMIN, make_app
from tests.openai_schema import validate


def test_rotate_now_and_with_grace(sqlite_db: Database) -> None:
    t = tenants.create_tenant(sqlite_db, "acme")
    first = tenants.create_key(sqlite_db, "acme", name="prod")
    second = tenants.rotate_key(sqlite_db, first.info.id)
    assert second.info.name == "prod" and second.info.tenant_id == t.id
    assert tenants.authenticate(sqlite_db, first.secret) is None
    assert tenants.authenticate(sqlite_db, second.secret).tenant_id == t.id

    third = tenants.rotate_key(sqlite_db, second.info.id, grace_seconds=3600)
    assert tenants.authenticate(sqlite_db, second.secret) is not None  # still inside the grace period
    assert tenants.authenticate(sqlite_db, third.secret) is not None
    old = next(k for k in tenants.list_keys(sqlite_db, "acme") if k.id == second.info.id)
    assert old.expires_at is not None and old.expires_at <= utcnow() + timedelta(seconds=3601)

    with pytest.raises(TailorError) as info:
        tenants.rotate_key(sqlite_db, first.info.id)  # revoked keys are not rotated
    assert info.value.status == 400
    with pytest.raises(TailorError) as info:
        tenants.rotate_key(sqlite_db, "key-nope")
    assert info.value.status == 404
    with pytest.raises(TailorError):
        tenants.rotate_key(sqlite_db, third.info.id, grace_seconds=-1)


def test_rotate_over_http_and_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with TestClient(make_app(tmp_path)) as client:
        admin = ADMIN
        assert client.post("/admin/tenants", json={"name": "acme"}, headers=admin).status_code == 201
        key = client.post("/admin/tenants/acme/keys", json={"name": "k"}, headers=admin).json()
        r = client.post(f"/admin/keys/{key['id']}/rotate", headers=admin)
        assert r.status_code == 201, r.text
        new = r.json()
        assert new["key"] != key["key"] and new["name"] == "k"
        old_auth = {"Authorization": f"Bearer {key['key']}"}
        r = client.get("/v1/models", headers=old_auth)
        assert r.status_code == 401
        validate(r.json(), "ErrorResponse")
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {new['key']}"}).status_code == 200
        r = client.post("/admin/keys/key-nope/rotate", headers=admin)
        assert r.status_code == 404
        validate(r.json(), "ErrorResponse")

    monkeypatch.setenv("TAILOR_DATA_DIR", str(tmp_path / "cli"))
    runner = CliRunner()
    assert runner.invoke(cli, ["tenants", "create", "acme"]).exit_code == 0
    created = runner.invoke(cli, ["keys", "create", "acme", "--json"])
    key_id = json.loads(created.output)["id"]
    rotated = runner.invoke(cli, ["keys", "rotate", key_id, "--grace-seconds", "60", "--json"])
    assert rotated.exit_code == 0, rotated.output
    assert json.loads(rotated.output)["key"].startswith("tk-")


@pytest.mark.parametrize("grace", [tenants.MAX_GRACE_SECONDS + 1, 10**20])
def test_huge_grace_is_400_and_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grace: int) -> None:
    with TestClient(make_app(tmp_path)) as client:
        assert client.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN).status_code == 201
        key = client.post("/admin/tenants/acme/keys", json={"name": "k"}, headers=ADMIN).json()
        r = client.post(f"/admin/keys/{key['id']}/rotate", params={"grace_seconds": grace}, headers=ADMIN)
        assert r.status_code == 400, r.text
        validate(r.json(), "ErrorResponse")
        assert r.json()["error"]["param"] == "grace_seconds"
        listed = client.get("/admin/tenants/acme/keys", headers=ADMIN).json()
        assert [(k["id"], k["expires_at"], k["revoked_at"]) for k in listed] == [(key["id"], None, None)]
        r = client.post(
            f"/admin/keys/{key['id']}/rotate", params={"grace_seconds": tenants.MAX_GRACE_SECONDS}, headers=ADMIN
        )
        assert r.status_code == 201, r.text  # the bound itself is allowed

    monkeypatch.setenv("TAILOR_DATA_DIR", str(tmp_path / "cli"))
    runner = CliRunner()
    assert runner.invoke(cli, ["tenants", "create", "acme"]).exit_code == 0
    key_id = json.loads(runner.invoke(cli, ["keys", "create", "acme", "--json"]).output)["id"]
    refused = runner.invoke(cli, ["keys", "rotate", key_id, "--grace-seconds", str(grace), "--json"])
    assert refused.exit_code != 0 and "grace_seconds" in refused.output
