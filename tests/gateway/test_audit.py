"""The audit log (gateway/audit.py, gateway/routes/audit.py) on the real app.

Each admin and tenant-management action appends exactly one event with its actor, action,
target and state before and after; failed actions append nothing. `/admin/audit` filters
and pages every tenant's events, `/v1/audit` shows a tenant its own. The CLI's events:
test_audit_cli.py; the table itself: test_audit_store.py.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from core.db import Database
from core.ids import new_id
from core.models import AuditEvent, Feedback
from gateway import audit
from gateway.routes import audit as audit_routes
from tests.adapters.test_validation import tiny_config, write_adapter
from tests.apputil import ADMIN, TenantsApi, error, make_app, ok, serve_tenants

# Seeded events are far in the past: the fixture's own events (at now) never fall in their window.
T0 = datetime(2001, 3, 1, 12, 0, tzinfo=timezone.utc)


def with_audit_routes(app: FastAPI) -> FastAPI:
    """The app with the audit routers, unless create_app registers them already."""
    paths = {getattr(r, "path", None) for r in app.routes}
    if "/v1/audit" not in paths:
        app.include_router(audit_routes.router)
    if "/admin/audit" not in paths:
        app.include_router(audit_routes.admin_router)
    return app


class Api(TenantsApi):
    seen: int = 0  # the newest event id a test has looked at

    def events(self, path: str = "/admin/audit", headers: dict[str, str] = ADMIN, **params: Any) -> dict[str, Any]:
        return ok(self.client.get(path, params=params, headers=headers))  # type: ignore[no-any-return]

    def new(self) -> list[dict[str, Any]]:
        """Events since the last call, oldest first."""
        body = self.events(before=self.seen, limit=1000)
        assert not body["has_more"]
        fresh = list(reversed(body["data"]))
        if fresh:
            self.seen = fresh[-1]["id"]
        return fresh

    def one(self, action: str, **expected: Any) -> dict[str, Any]:
        """The single event since the last look: `action`, with the `expected` fields."""
        fresh = self.new()
        assert [e["action"] for e in fresh] == [action], fresh
        event = fresh[0]
        for field, value in expected.items():
            assert event[field] == value, (field, event)
        return event

    def nothing_new(self) -> None:
        assert self.new() == []


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_adapter(tmp_path_factory.mktemp("audit-adapter") / "lora")


@pytest.fixture(scope="module")
def adapter_archive(adapter_dir: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for f in adapter_dir.iterdir():
            tar.add(f, arcname=f.name)
    return buffer.getvalue()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    base = tmp_path / "tiny-llama"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(tiny_config()))
    app = with_audit_routes(make_app(tmp_path / "data", base_model_path=base))
    with serve_tenants(app, Api) as api:
        api.new()  # the fixture's own tenants and keys
        yield api


def _key_ids(api: Api) -> dict[str, str]:
    """Tenant name -> id of the key the fixture made (from the audit log itself)."""
    body = api.events(action="key.create")
    by_tenant = {v: k for k, v in api.ids.items()}
    return {by_tenant[e["tenant_id"]]: e["target"] for e in body["data"]}


# --- tenants and keys ---------------------------------------------------------------


def test_tenant_and_key_actions(api: Api) -> None:
    r = api.client.post("/admin/tenants", json={"name": "gamma"}, headers=ADMIN)
    gamma = r.json()["id"]
    api.one("tenant.create", actor="admin", tenant_id=gamma, target="gamma", before=None)
    assert api.events(limit=1)["data"][0]["after"] == {"id": gamma, "name": "gamma"}

    expires = "2030-01-01T00:00:00Z"
    body = {"name": "ci", "expires_at": expires}
    created = ok_status(api.client.post("/admin/tenants/gamma/keys", json=body, headers=ADMIN))
    event = api.one("key.create", actor="admin", tenant_id=gamma, target=created["id"], before=None)
    assert event["after"] == {
        "id": created["id"],
        "hint": created["hint"],
        "name": "ci",
        "expires_at": "2030-01-01T00:00:00+00:00",
        "revoked_at": None,
    }
    assert created["key"] not in json.dumps(event)  # never the secret

    rotated = ok_status(api.client.post(f"/admin/keys/{created['id']}/rotate?grace_seconds=60", headers=ADMIN))
    event = api.one("key.rotate", actor="admin", tenant_id=gamma, target=created["id"])
    assert event["before"]["old_key"]["expires_at"] == "2030-01-01T00:00:00+00:00"
    assert event["after"]["old_key"]["expires_at"] < "2030"  # the grace period ends it
    assert event["after"]["new_key"]["id"] == rotated["id"] and event["after"]["grace_seconds"] == 60
    assert rotated["key"] not in json.dumps(event)

    ok(api.client.post(f"/admin/keys/{rotated['id']}/revoke", headers=ADMIN))
    event = api.one("key.revoke", actor="admin", tenant_id=gamma, target=rotated["id"])
    assert event["before"]["revoked_at"] is None and event["after"]["revoked_at"] is not None
    assert event["after"]["hint"] == rotated["hint"]

    ok(api.client.delete("/admin/tenants/gamma", headers=ADMIN))
    api.one("tenant.delete", actor="admin", tenant_id=gamma, target="gamma", after=None)
    assert api.events(limit=1)["data"][0]["before"] == {"id": gamma, "name": "gamma"}

    # Events outlive their tenant: found by its id, while its name is gone.
    actions = [e["action"] for e in api.events(tenant=gamma)["data"]]
    assert actions == ["tenant.delete", "key.revoke", "key.rotate", "key.create", "tenant.create"]
    assert error(api.client.get("/admin/audit", params={"tenant": "gamma"}, headers=ADMIN), 404)["code"] == (
        "tenant_not_found"
    )
    error(api.client.get("/admin/audit", params={"tenant": "ten-never-was"}, headers=ADMIN), 404)


def ok_status(r: Any) -> dict[str, Any]:
    assert r.status_code in (200, 201), r.text
    return r.json()  # type: ignore[no-any-return]


def test_failed_tenant_and_key_actions_record_nothing(api: Api) -> None:
    error(api.client.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN), 409)
    error(api.client.post("/admin/tenants", json={"name": "Bad Name"}, headers=ADMIN), 400)
    error(api.client.delete("/admin/tenants/nobody", headers=ADMIN), 404)
    error(api.client.post("/admin/tenants/nobody/keys", json={}, headers=ADMIN), 404)
    error(api.client.post("/admin/keys/key-nope/revoke", headers=ADMIN), 404)
    error(api.client.post("/admin/keys/key-nope/rotate", headers=ADMIN), 404)
    error(api.client.post("/admin/tenants", json={"name": "delta"}), 401)
    api.nothing_new()


# --- adapters -----------------------------------------------------------------------


def test_adapter_actions(api: Api, adapter_archive: bytes, adapter_dir: Path) -> None:
    own = api.keys["acme"]
    acme = api.ids["acme"]
    me = audit.actor_for_key(_key_ids(api)["acme"])
    upload = {"file": ("lora.tar.gz", adapter_archive)}

    ok_status(api.client.post("/v1/adapters", data={"name": "support"}, files=upload, headers=own))
    event = api.one("adapter.upload", actor=me, tenant_id=acme, target="support", before=None)
    assert event["after"]["active_version"] == 1 and event["after"]["versions"] == [1]
    assert event["after"]["version"]["version"] == 1 and event["after"]["version"]["source"] == "upload"

    ok_status(api.client.post("/admin/tenants/acme/adapters", data={"name": "support"}, files=upload, headers=ADMIN))
    event = api.one("adapter.upload", actor="admin", target="support")
    assert event["before"]["active_version"] == 1 and event["after"]["active_version"] == 2

    ok(api.client.post("/v1/adapters/support/activate", json={"version": 1}, headers=own))
    event = api.one("adapter.promote", actor=me, tenant_id=acme, target="support")
    assert (event["before"]["active_version"], event["after"]["active_version"]) == (2, 1)

    ok(api.client.post("/admin/tenants/acme/adapters/support/rollback", headers=ADMIN))
    event = api.one("adapter.rollback", actor="admin", tenant_id=acme, target="support")
    assert (event["before"]["active_version"], event["after"]["active_version"]) == (1, 2)

    ok(api.client.post("/v1/adapters/support/canary", json={"version": 1, "fraction": 0.25}, headers=own))
    event = api.one("adapter.canary.start", actor=me, target="support")
    assert event["before"]["canary_version"] is None
    assert (event["after"]["canary_version"], event["after"]["canary_fraction"]) == (1, 0.25)

    ok(api.client.delete("/admin/tenants/acme/adapters/support/canary", headers=ADMIN))
    event = api.one("adapter.canary.stop", actor="admin", target="support")
    assert event["before"]["canary_version"] == 1 and event["after"]["canary_version"] is None

    body = {"name": "support", "path": str(adapter_dir), "activate": False}
    ok_status(api.client.post("/admin/tenants/acme/adapters/register", json=body, headers=ADMIN))
    event = api.one("adapter.register", actor="admin", tenant_id=acme, target="support")
    # the digest names what was registered; the operator's filesystem path is not the tenant's business
    assert "path" not in event["after"] and event["after"]["version"]["version"] == 3
    assert event["after"]["version"]["source"] == "path" and len(event["after"]["version"]["digest"]) >= 32
    assert event["after"]["active_version"] == 2  # registered, not activated

    ok(api.client.delete("/v1/adapters/support", headers=own))
    event = api.one("adapter.delete", actor=me, tenant_id=acme, target="support", after=None)
    assert event["before"]["versions"] == [1, 2, 3]


def test_failed_adapter_actions_record_nothing(api: Api, adapter_archive: bytes) -> None:
    own = api.keys["acme"]
    error(api.client.post("/v1/adapters/ghost/rollback", headers=own), 404)
    error(api.client.post("/admin/tenants/acme/adapters/ghost/rollback", headers=ADMIN), 404)
    error(api.client.post("/v1/adapters/ghost/activate", json={"version": 1}, headers=own), 404)
    error(api.client.delete("/v1/adapters/ghost/canary", headers=own), 404)
    error(api.client.delete("/v1/adapters/ghost", headers=own), 404)
    bad = {"file": ("lora.tar.gz", b"not an archive")}
    assert api.client.post("/v1/adapters", data={"name": "support"}, files=bad, headers=own).status_code == 400
    body = {"name": "support", "path": "/nonexistent"}
    error(api.client.post("/admin/tenants/acme/adapters/register", json=body, headers=ADMIN), 400)
    api.nothing_new()

    upload = {"file": ("lora.tar.gz", adapter_archive)}
    ok_status(api.client.post("/v1/adapters", data={"name": "support"}, files=upload, headers=own))
    api.one("adapter.upload")
    error(api.client.post("/v1/adapters/support/rollback", headers=own), 400)  # nothing earlier
    error(api.client.post("/v1/adapters/support/activate", json={"version": 9}, headers=own), 404)
    error(api.client.post("/v1/adapters/support/canary", json={"version": 1, "fraction": 0.5}, headers=own), 400)
    # another tenant's name is not there for beta
    error(api.client.post("/v1/adapters/support/activate", json={"version": 1}, headers=api.keys["beta"]), 404)
    api.nothing_new()


# --- policy and training ------------------------------------------------------------


def test_policy_changes(api: Api) -> None:
    own = api.keys["acme"]
    ok(api.client.put("/v1/policy", json={"auto_promote": True, "retrain_min_feedback": 10}, headers=own))
    me = audit.actor_for_key(_key_ids(api)["acme"])
    event = api.one("policy.update", actor=me, tenant_id=api.ids["acme"], target="acme")
    assert (event["before"]["auto_promote"], event["after"]["auto_promote"]) == (False, True)
    assert (event["before"]["retrain_min_feedback"], event["after"]["retrain_min_feedback"]) == (50, 10)
    assert event["after"]["gates"] == event["before"]["gates"]
    assert "last_triggered_at" not in event["after"]

    ok(api.client.put("/admin/tenants/beta/policy", json={"retrain": "drift"}, headers=ADMIN))
    event = api.one("policy.update", actor="admin", tenant_id=api.ids["beta"], target="beta")
    assert (event["before"]["retrain"], event["after"]["retrain"]) == ("on_demand", "drift")

    error(api.client.put("/v1/policy", json={"retrain": "sometimes"}, headers=own), 400)
    error(api.client.put("/admin/tenants/nobody/policy", json={"retrain": "drift"}, headers=ADMIN), 404)
    ok(api.client.get("/v1/policy", headers=own))  # reading is no action
    api.nothing_new()


def add_feedback(db: Database, tenant_id: str, n: int = 6) -> None:
    with db.session() as s:
        for i in range(n):
            messages = [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}."}]
            s.add(Feedback(id=new_id("fb"), tenant_id=tenant_id, rating="good", source="import", messages=messages))


def test_admin_train_from_feedback(api: Api) -> None:
    url = "/admin/tenants/acme/train"
    error(api.client.post(url, json={"adapter_name": "helper"}, headers=ADMIN), 400)  # no feedback yet
    api.nothing_new()
    add_feedback(api.db, api.ids["acme"])
    body = {"adapter_name": "helper", "hyperparameters": {"max_steps": 5}}
    job = ok_status(api.client.post(url, json=body, headers=ADMIN))
    event = api.one("job.create", actor="admin", tenant_id=api.ids["acme"], target=job["id"], before=None)
    after = event["after"]
    assert (after["id"], after["method"], after["adapter_name"], after["source"]) == (
        job["id"],
        "supervised",
        "helper",
        "feedback",
    )
    assert after["dataset_id"].startswith("ds-") and after["hyperparameters"]["max_steps"] == 5


# --- reading: filters, paging, CSV ----------------------------------------------------


def _seed(db: Database, tenants: dict[str, str]) -> list[int]:
    """Nine events an hour apart: acme and beta in turn, three kinds of action, two actors."""
    rows = []
    with db.session() as s:
        for i in range(9):
            row = AuditEvent(
                at=T0 + timedelta(hours=i),
                actor="admin" if i % 3 else "cli:alice",
                tenant_id=tenants["acme" if i % 2 == 0 else "beta"],
                action=("adapter.promote", "adapter.canary.start", "key.create")[i % 3],
                target=f"t{i}",
                before={"i": i - 1} if i else None,
                after={"i": i, "note": 'quote " and, comma'},
            )
            s.add(row)
            rows.append(row)
        s.flush()
        return [r.id for r in rows]


def test_filters(api: Api) -> None:
    ids = _seed(api.db, api.ids)
    seeded = {"since": T0.isoformat(), "until": (T0 + timedelta(days=1)).isoformat()}

    def targets(**params: Any) -> list[str]:
        return [e["target"] for e in api.events(**seeded, **params)["data"]]

    assert targets() == [f"t{i}" for i in reversed(range(9))]  # newest first
    assert targets(tenant="acme") == ["t8", "t6", "t4", "t2", "t0"]
    assert targets(tenant=api.ids["beta"]) == ["t7", "t5", "t3", "t1"]
    assert targets(action="key.create") == ["t8", "t5", "t2"]
    assert targets(action="adapter.") == ["t7", "t6", "t4", "t3", "t1", "t0"]
    assert targets(action="adapter.*") == targets(action="adapter.")
    assert targets(action="adapter.canary.") == ["t7", "t4", "t1"]
    assert targets(action="adapter") == []  # exact unless it ends with "."
    assert targets(action="adapter_") == [] and targets(action="adapter%") == []
    assert targets(actor="cli:alice") == ["t6", "t3", "t0"]
    assert targets(actor="cli:alice", tenant="acme", action="adapter.promote") == ["t6", "t0"]
    # since inclusive, until exclusive; times in any zone, or none (UTC)
    window = {"since": (T0 + timedelta(hours=2)).isoformat(), "until": "2001-03-01T21:00:00+05:00"}
    assert [e["target"] for e in api.events(**window)["data"]] == ["t3", "t2"]
    later = [e["target"] for e in api.events(since="2001-03-01T19:30:00")["data"]]
    assert "t8" in later and "t7" not in later
    assert [e["target"] for e in api.events(until="2001-03-01")["data"]] == []
    assert api.events(until="2001-03-01T12:00:01Z")["data"][0]["id"] == ids[0]

    event = api.events(**seeded, limit=1)["data"][0]
    assert event == {
        "object": "audit.event",
        "id": ids[8],
        "at": "2001-03-01T20:00:00Z",
        "actor": "admin",
        "tenant_id": api.ids["acme"],
        "action": "key.create",
        "target": "t8",
        "before": {"i": 7},
        "after": {"i": 8, "note": 'quote " and, comma'},
    }


def test_paging(api: Api) -> None:
    ids = _seed(api.db, api.ids)
    acme = {"tenant": "acme", "until": (T0 + timedelta(days=1)).isoformat()}  # the seeded events only
    first = api.events(**acme, limit=2)
    assert [e["id"] for e in first["data"]] == [ids[8], ids[6]]
    assert first["has_more"] and first["first_id"] == ids[8] and first["last_id"] == ids[6]
    second = api.events(**acme, limit=2, after=first["last_id"])
    assert [e["id"] for e in second["data"]] == [ids[4], ids[2]] and second["has_more"]
    third = api.events(**acme, limit=2, after=second["last_id"])
    assert [e["id"] for e in third["data"]] == [ids[0]] and not third["has_more"]
    # before: back to the page just newer than a cursor, still newest first
    back = api.events(**acme, limit=2, before=third["first_id"])
    assert back["data"] == second["data"] and back["has_more"]
    top = api.events(**acme, limit=2, before=back["first_id"])
    assert [e["id"] for e in top["data"]] == [ids[8], ids[6]] and not top["has_more"]
    empty = api.events(limit=5, after=min(ids) - 100)
    assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    assert len(api.events()["data"]) == min(100, len(api.events(limit=1000)["data"]))
    for bad in (0, 1001, "many"):
        error(api.client.get("/admin/audit", params={"limit": bad}, headers=ADMIN), 400, "limit")
    error(api.client.get("/admin/audit", params={"since": "yesterday"}, headers=ADMIN), 400, "since")
    error(api.client.get("/admin/audit", params={"after": "evt_1"}, headers=ADMIN), 400, "after")


def test_csv_export(api: Api) -> None:
    ids = _seed(api.db, api.ids)
    r = api.client.get("/admin/audit", params={"tenant": "beta", "format": "csv"}, headers=ADMIN)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert f'filename="audit-{api.ids["beta"]}.csv"' in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    # beta's own tenant.create and key.create from the fixture, then the seeded ones
    assert [row["target"] for row in rows][:4] == ["t7", "t5", "t3", "t1"]
    assert list(rows[0]) == list(audit.CSV_COLUMNS)
    assert rows[0]["id"] == str(ids[7]) and rows[0]["at"] == "2001-03-01T19:00:00+00:00"
    assert json.loads(rows[0]["after"]) == {"i": 7, "note": 'quote " and, comma'}
    assert json.loads(rows[0]["before"]) == {"i": 6}
    assert {row["action"] for row in rows[4:]} == {"tenant.create", "key.create"}

    page = api.client.get("/admin/audit", params={"format": "csv", "limit": 2, "after": ids[5]}, headers=ADMIN)
    assert [row["target"] for row in csv.DictReader(io.StringIO(page.text))] == ["t4", "t3"]
    own = api.client.get("/v1/audit", params={"format": "csv"}, headers=api.keys["acme"])
    assert 'filename="audit-acme.csv"' in own.headers["content-disposition"]
    assert {row["tenant_id"] for row in csv.DictReader(io.StringIO(own.text))} == {api.ids["acme"]}


# --- who may read -------------------------------------------------------------------


def test_a_tenant_sees_only_its_own_events(api: Api) -> None:
    _seed(api.db, api.ids)
    api.client.put("/admin/tenants/beta/policy", json={"retrain": "drift"}, headers=ADMIN)
    for name in ("acme", "beta"):
        body = api.events("/v1/audit", api.keys[name], limit=1000)
        assert body["data"] and {e["tenant_id"] for e in body["data"]} == {api.ids[name]}
        # no way to ask for another tenant's: the parameter is not there
        other = "beta" if name == "acme" else "acme"
        sneaky = api.events("/v1/audit", api.keys[name], tenant=api.ids[other], limit=1000)
        assert sneaky == body
    filtered = api.events("/v1/audit", api.keys["beta"], action="policy.")["data"]
    assert [e["action"] for e in filtered] == ["policy.update"] and filtered[0]["actor"] == "admin"
    error(api.client.get("/v1/audit"), 401)
    error(api.client.get("/v1/audit", headers={"authorization": "Bearer sk-nope"}), 401)


def test_the_admin_route_needs_the_admin_key(api: Api) -> None:
    assert error(api.client.get("/admin/audit"), 401)["code"] == "missing_api_key"
    assert error(api.client.get("/admin/audit", headers=api.keys["acme"]), 401)["code"] == "invalid_api_key"


def test_the_admin_route_is_off_without_an_admin_key(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    app = with_audit_routes(make_app(tmp_path, admin_key=None))
    with TestClient(app) as client:
        assert error(client.get("/admin/audit", headers=ADMIN), 403)["code"] == "admin_disabled"
