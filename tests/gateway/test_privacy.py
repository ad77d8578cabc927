"""gateway.privacy and /admin/tenants/{t}/privacy|export|purge on the real app (no engine).

The key test fills every table with two tenants' data through the APIs and trainer
functions, exports one, purges it, and checks row by row that exactly its data is gone:
no row of any table (derived from the models' metadata) mentions it, no blob under its
prefixes, its unshared adapter files gone, the other tenant untouched, the audit log kept.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import select

from adapters import checkpoints, registry
from core.db import Database
from core.models import AuditEvent, Base, Feedback, Interaction, RateCounter, Tenant
from gateway import privacy
from gateway.batches import lease as batch_lease
from gateway.console import auth as console_auth
from gateway.redaction import CARD, EMAIL
from gateway.routes import privacy as privacy_routes
from tests.adapters.test_validation import tiny_config, write_adapter
from tests.apputil import ADMIN, TenantsApi, error, make_app, ok, serve_tenants
from tests.conftest import BACKENDS
from tests.dbutil import add_interaction
from tests.gateway.test_privacy_retention import stored_response
from tests.pg import create_database
from trainer import datasets, job_records, jobs

PURGE_PATH = "/admin/tenants/{tenant}/purge"


def privacy_app(tmp_path: Path, database_url: str | None = None) -> FastAPI:
    """The gateway app with the privacy routes, whether or not create_app registers them yet."""
    base = tmp_path / "tiny-llama"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(tiny_config()))
    app = make_app(tmp_path / "data", base_model_path=base, database_url=database_url)
    if PURGE_PATH not in {getattr(r, "path", None) for r in app.routes}:
        app.include_router(privacy_routes.router)
    return app


@dataclass
class Api(TenantsApi):
    tmp: Path = Path()

    @property
    def services(self) -> Any:
        return self.app.state.services

    def admin(self, tenant: str, what: str) -> str:
        return f"/admin/tenants/{tenant}/{what}"


@pytest.fixture(params=BACKENDS)
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """The app on SQLite, and again on PostgreSQL (delete order and cascades differ)."""
    url = None if request.param == "sqlite" else create_database(request.getfixturevalue("postgres_url"), "t")
    with serve_tenants(privacy_app(tmp_path, url), Api) as api:
        api.tmp = tmp_path
        yield api


# --- filling every table ------------------------------------------------------------------


@dataclass
class Filled:
    ids: set[str]  # every id created for the tenant (adapters, versions, jobs, ...)
    file_bytes: bytes
    own_digest: str
    shared_digest: str
    checkpoint_digest: str  # a job checkpoint's adapter, callable as a model


CHAT = {"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]}


def fill(api: Api, tenant: str, shared_dir: Path) -> Filled:
    """Real data of `tenant` in every table with tenant data."""
    c, key, tid, svc = api.client, api.keys[tenant], api.ids[tenant], api.services
    ids: set[str] = set()
    ok(c.put(api.admin(tenant, "privacy"), json={"retention_days": 30}, headers=ADMIN))
    ids.add(c.post(f"/admin/tenants/{tenant}/keys", json={"name": "second"}, headers=ADMIN).json()["id"])
    user = console_auth.login(svc.db, svc.settings, next(iter(key.values())).removeprefix("Bearer "))
    assert user is not None
    console_auth.start_session(svc.db, svc.settings, user)  # a console session row

    # adapters: one of its own, one with the same files as another tenant's (one stored copy)
    own_dir = write_adapter(api.tmp / f"lora-{tenant}")
    versions = [
        registry.register_dir(
            svc.db,
            svc.store,
            svc.limits,
            tenant_id=tid,
            name=name,
            source_dir=source,
            base_model_name=svc.settings.base_model_name,
            actor="test",
        )
        for name, source in (("own", own_dir), ("shared", shared_dir))
    ]
    ids |= {v.id for v in versions} | {a.id for a in registry.list_adapters(svc.db, tid)}

    # interactions and feedback through the API
    interaction = add_interaction(
        svc.db,
        tid,
        model="own",
        adapter_version_id=versions[0].id,
        request={"messages": [{"role": "user", "content": f"I am {tenant}@example.com"}]},
        response_text="Hello.",
    )
    ids.add(interaction)
    fb = c.post("/v1/feedback", json={"interaction_id": interaction, "correction": "Hi!"}, headers=key)
    assert fb.status_code == 201, fb.text
    ids.add(fb.json()["id"])
    ids.add(stored_response(svc.db, tid, 0))  # a stored Responses API answer

    # a file, a dataset snapshot of it, a job with events, a checkpoint and an evaluation
    file_bytes = (json.dumps(CHAT) + "\n").encode() * 3
    up = c.post("/v1/files", files={"file": ("t.jsonl", file_bytes)}, data={"purpose": "fine-tune"}, headers=key)
    assert up.status_code == 200, up.text
    file_id = up.json()["id"]
    snapshot = datasets.build_from_files(svc.db, svc.blobs, tid, file_id)
    job = jobs.submit(
        svc.db, tid, method="supervised", model=svc.settings.base_model_name, training_file=file_id, actor="test"
    )
    job_records.add_event(svc.db, job.id, "Training started")
    checkpoint = f"checkpoints/{tid}/{job.id}/step-1"
    svc.blobs.put_bytes(f"{checkpoint}/adapter_model.safetensors", b"weights")
    limits = svc.limits
    checkpoint_digest = checkpoints.store_checkpoint(
        svc.store,
        write_adapter(api.tmp / f"ckpt-{tenant}"),
        base=limits.base,
        max_rank=limits.max_rank,
        max_bytes=limits.max_bytes,
    )
    ckpt = job_records.add_checkpoint(
        svc.db, job.id, step=1, metrics={"step": 1, "train_loss": 0.5}, path=checkpoint, digest=checkpoint_digest
    )
    report = f"reports/{tid}/{job.id}/report.json"
    svc.blobs.put_bytes(report, b"{}")
    evaluation = job_records.record_evaluation(
        svc.db,
        tenant_id=tid,
        job_id=job.id,
        candidate_version_id=versions[0].id,
        baseline_version_id=None,
        dataset_id=snapshot.id,
        candidate_metrics={"token_f1": 0.5},
        baseline_metrics={"token_f1": 0.4},
        decision="candidate",
        reasons=[],
        report_key=report,
    )
    ids |= {file_id, snapshot.id, job.id, ckpt.id, evaluation.id}

    # a batch of requests, one of them run (its output line is kept until the batch ends)
    request = {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "own"}}
    batch_file = c.post(
        "/v1/files", files={"file": ("b.jsonl", json.dumps(request).encode())}, data={"purpose": "batch"}, headers=key
    )
    assert batch_file.status_code == 200, batch_file.text
    body = {"input_file_id": batch_file.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    batch = ok(c.post("/v1/batches", json=body, headers=key))
    assert batch_lease.claim(svc.db, "gw", lease_s=60, batch_id=batch["id"]) is not None
    batch_lease.record(svc.db, batch["id"], "gw", line=0, failed=False, output={"batch": batch["id"]}, lease_s=60)
    ids |= {batch_file.json()["id"], batch["id"]}

    ok(c.put("/v1/policy", json={"retrain": "off"}, headers=key))
    with svc.db.session() as s:
        s.add(RateCounter(tenant_id=tid, kind="requests_minute", bucket=29_000_000, count=3))
    return Filled(
        ids=ids,
        file_bytes=file_bytes,
        own_digest=versions[0].digest,
        shared_digest=versions[1].digest,
        checkpoint_digest=checkpoint_digest,
    )


def all_rows(db: Database) -> dict[str, list[str]]:
    """Every row of every table but the audit log, as canonical JSON."""
    out: dict[str, list[str]] = {}
    with db.session() as s:
        for table in Base.metadata.sorted_tables:
            if table.name == "audit_events":
                continue
            rows = s.execute(select(table)).mappings()
            out[table.name] = sorted(json.dumps(dict(r), default=str, sort_keys=True) for r in rows)
    return out


def mentions(row: str, markers: set[str]) -> bool:
    return any(m in row for m in markers)


def blob_keys(api: Api, tenant_id: str) -> list[str]:
    return [k for p in privacy.BLOB_PREFIXES for k in api.services.blobs.list(f"{p}/{tenant_id}")]


def test_export_then_purge_removes_exactly_one_tenants_data(api: Api) -> None:
    svc = api.services
    shared_dir = write_adapter(api.tmp / "lora-shared")
    acme, beta = fill(api, "acme", shared_dir), fill(api, "beta", shared_dir)
    acme_id, beta_id = api.ids["acme"], api.ids["beta"]
    assert acme.shared_digest == beta.shared_digest != acme.own_digest
    acme_markers = acme.ids | {acme_id}

    before = all_rows(svc.db)
    # Every table with tenant data holds some of acme's and of beta's: the test covers them all.
    for scoped in privacy.tenant_tables():
        assert any(mentions(r, acme_markers) for r in before[scoped.name]), scoped.name
        assert any(mentions(r, beta.ids | {beta_id}) for r in before[scoped.name]), scoped.name
    beta_blobs = blob_keys(api, beta_id)
    # training file, batch file, dataset, checkpoint, report
    assert len(beta_blobs) == 5 and len(blob_keys(api, acme_id)) == 5

    # --- export -----------------------------------------------------------------------
    r = api.client.get(api.admin("acme", "export"), headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    assert "attachment" in r.headers["content-disposition"]
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    manifest = json.loads(zf.read("manifest.json"))
    assert (manifest["tenant_id"], manifest["tenant_name"], manifest["format"]) == (acme_id, "acme", 1)
    for scoped in privacy.tenant_tables():
        lines = zf.read(f"tables/{scoped.name}.jsonl").decode().splitlines()
        assert manifest["tables"][scoped.name] == len(lines) > 0, scoped.name
        assert sum(mentions(row, acme_markers) for row in before[scoped.name]) == len(lines), scoped.name
        assert not any(mentions(line, beta.ids | {beta_id}) for line in lines), scoped.name
    assert (manifest["tables"]["api_keys"], manifest["tables"]["adapter_versions"]) == (2, 2)
    keys = [json.loads(line) for line in zf.read("tables/api_keys.jsonl").decode().splitlines()]
    assert all("key_hash" not in k and k["hint"] for k in keys)
    tenant_row = json.loads(zf.read("tables/tenants.jsonl"))
    assert (tenant_row["name"], tenant_row["retention_days"]) == ("acme", 30)
    blobs_in_zip = sorted(n.removeprefix("blobs/") for n in zf.namelist() if n.startswith("blobs/"))
    assert blobs_in_zip == sorted(blob_keys(api, acme_id)) and manifest["blobs"] == 5
    file_keys = [k for k in blobs_in_zip if k.startswith("files/")]  # the training file and the batch's
    assert len(file_keys) == 2 and acme.file_bytes in {zf.read(f"blobs/{k}") for k in file_keys}
    assert manifest["adapter_objects"] == 3 and manifest["missing_adapter_objects"] == []
    for digest in (acme.own_digest, acme.shared_digest, acme.checkpoint_digest):
        assert f"adapters/{digest}/adapter_model.safetensors" in zf.namelist()
        assert f"adapters/{digest}/MANIFEST.json" in zf.namelist()

    # --- purge ------------------------------------------------------------------------
    def served(ids: set[str]) -> set[str]:  # what engines know by id: versions and checkpoints
        return {i for i in ids if i.startswith(("av-", "ftckpt-"))}

    engine = svc.pool.engines[0]
    for name in served(acme.ids) | served(beta.ids):
        engine.resident[name] = "/somewhere"  # as if loaded; unloading fails (no engine), it is forgotten anyway

    bad = error(api.client.post(api.admin("acme", "purge"), json={"confirm": "beta"}, headers=ADMIN), 400, "confirm")
    assert bad["code"] == "confirmation_mismatch"
    error(api.client.post(api.admin("acme", "purge"), json={}, headers=ADMIN), 400, "confirm")
    error(api.client.post(api.admin("acme", "purge"), json={"confirm": "acme"}, headers=api.keys["acme"]), 401)
    assert all_rows(svc.db) == before  # refused purges changed nothing

    body = ok(api.client.post(api.admin("acme", "purge"), json={"confirm": "acme"}, headers=ADMIN))
    assert (body["object"], body["id"], body["name"], body["purged"]) == ("tenant.purge", acme_id, "acme", True)
    assert (body["blobs"], body["adapter_objects"], body["shared_adapter_objects"], body["evicted"]) == (5, 2, 1, 3)
    assert body["rows"]["tenants"] == 1 and body["rows"]["adapter_versions"] == 2 and body["rows"]["api_keys"] == 2

    # Exactly acme's rows are gone, in every table; beta's are as they were.
    after = all_rows(svc.db)
    for table, rows in before.items():
        assert after[table] == [r for r in rows if not mentions(r, acme_markers)], table
    with svc.db.session() as s:
        for table in Base.metadata.sorted_tables:
            if "tenant_id" in table.c and table.name != "audit_events":
                assert s.execute(select(table).where(table.c.tenant_id == acme_id)).first() is None, table.name
    # Blobs, adapter files and engines.
    assert blob_keys(api, acme_id) == [] and blob_keys(api, beta_id) == beta_blobs
    assert not svc.store.exists(acme.own_digest) and not svc.store.exists(acme.checkpoint_digest)
    assert svc.store.exists(acme.shared_digest) and svc.store.exists(beta.own_digest)
    assert svc.store.exists(beta.checkpoint_digest)
    assert set(engine.resident) == served(beta.ids)
    beta_model = registry.resolve(svc.db, beta_id, "shared", svc.settings.base_model_name)
    assert svc.store.local_path(beta_model.digest or "").is_dir()
    # acme no longer exists for the API; beta works.
    error(api.client.get("/v1/models", headers=api.keys["acme"]), 401)
    assert {m["id"] for m in ok(api.client.get("/v1/models", headers=api.keys["beta"]))["data"]} >= {"own", "shared"}
    error(api.client.post(api.admin("acme", "purge"), json={"confirm": "acme"}, headers=ADMIN), 404)
    error(api.client.get(api.admin("acme", "export"), headers=ADMIN), 404)

    # The audit log keeps acme's history, the purge included, with counts and no content.
    with svc.db.session() as s:
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.tenant_id == acme_id).order_by(AuditEvent.id)))
    actions = [e.action for e in events]
    assert {"tenant.privacy", "tenant.export", "tenant.purge"} <= set(actions)
    (purge_event,) = [e for e in events if e.action == "tenant.purge"]
    assert (purge_event.actor, purge_event.target) == ("admin", "acme")
    assert purge_event.after is not None and purge_event.after["rows"] == body["rows"]
    assert "@" not in json.dumps(purge_event.after)

    # Running it again (say after a crash) finds nothing left and fails nowhere.
    again = privacy.purge_tenant(svc.db, svc.blobs, svc.store, acme_id)
    assert sum(again.rows.values()) == again.blobs == again.adapter_objects == 0
    assert all_rows(svc.db) == after


def test_purge_finishes_an_interrupted_purge(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = api.services
    shared_dir = write_adapter(api.tmp / "lora-shared")
    acme = fill(api, "acme", shared_dir)
    acme_id = api.ids["acme"]

    def crash(*_a: Any, **_k: Any) -> dict[str, int]:
        raise RuntimeError("killed")

    monkeypatch.setattr(privacy.purge, "_delete_rows", crash)
    with pytest.raises(RuntimeError):
        privacy.purge_tenant(svc.db, svc.blobs, svc.store, acme_id)
    monkeypatch.undo()
    # Half done: blobs, unshared adapter files and the big tables are gone, the tenant row is not.
    assert blob_keys(api, acme_id) == [] and not svc.store.exists(acme.own_digest)
    with svc.db.session() as s:
        assert s.get(Tenant, acme_id) is not None
        assert s.scalars(select(Interaction).where(Interaction.tenant_id == acme_id)).first() is None

    body = ok(api.client.post(api.admin("acme", "purge"), json={"confirm": "acme"}, headers=ADMIN))
    assert body["rows"]["tenants"] == 1 and body["rows"]["jobs"] == 1
    # The shared digest was only acme's here (beta has none), so it went too.
    assert body["shared_adapter_objects"] == 0 and not svc.store.exists(acme.shared_digest)
    after = all_rows(svc.db)
    assert not any(mentions(r, acme.ids | {acme_id}) for rows in after.values() for r in rows)


def test_tenant_tables_cover_every_table_but_the_audit_log() -> None:
    names = {t.name for t in privacy.tenant_tables()}
    # A new table must either hold tenant data (and be exported and purged) or be listed here.
    assert set(Base.metadata.tables) - names == {"audit_events"}
    by_name = {t.name: t for t in privacy.tenant_tables()}
    assert by_name["job_events"].parent is by_name["jobs"]
    assert by_name["adapter_versions"].parent is by_name["adapters"]
    order = [t.name for t in privacy.tenant_tables()]
    assert order.index("jobs") < order.index("job_checkpoints") and order[0] == "tenants"


# --- privacy settings ---------------------------------------------------------------------


def test_privacy_settings_get_put_and_audit(api: Api) -> None:
    c, path = api.client, api.admin("acme", "privacy")
    assert ok(c.get(path, headers=ADMIN)) == {
        "object": "tenant.privacy",
        "tenant": "acme",
        "retention_days": None,
        "redact_pii": False,
    }
    assert ok(c.put(path, json={"redact_pii": True}, headers=ADMIN))["redact_pii"] is True
    body = ok(c.put(path, json={"retention_days": 90}, headers=ADMIN))
    assert (body["retention_days"], body["redact_pii"]) == (90, True)  # omitted fields keep their value
    assert ok(c.put(path, json={"retention_days": None}, headers=ADMIN))["retention_days"] is None
    assert ok(c.get(api.admin("beta", "privacy"), headers=ADMIN))["redact_pii"] is False

    error(c.put(path, json={"retention_days": 0}, headers=ADMIN), 400, "retention_days")
    error(c.put(path, json={"retention_days": "7"}, headers=ADMIN), 400, "retention_days")
    error(c.put(path, json={"redact_pii": None}, headers=ADMIN), 400, "redact_pii")
    error(c.put(path, json={"retain": 3}, headers=ADMIN), 400)
    error(c.get(path, headers=api.keys["acme"]), 401)
    assert error(c.get(api.admin("nobody", "privacy"), headers=ADMIN), 404)["code"] == "tenant_not_found"

    with api.db.session() as s:
        events = list(
            s.scalars(
                select(AuditEvent)
                .where(AuditEvent.tenant_id == api.ids["acme"], AuditEvent.action == "tenant.privacy")
                .order_by(AuditEvent.id)
            )
        )
    assert [(e.before, e.after) for e in events] == [
        ({"retention_days": None, "redact_pii": False}, {"retention_days": None, "redact_pii": True}),
        ({"retention_days": None, "redact_pii": True}, {"retention_days": 90, "redact_pii": True}),
        ({"retention_days": 90, "redact_pii": True}, {"retention_days": None, "redact_pii": True}),
    ]


def test_feedback_is_stored_redacted_for_a_redacting_tenant(api: Api) -> None:
    ok(api.client.put(api.admin("acme", "privacy"), json={"redact_pii": True}, headers=ADMIN))
    stored = {}
    for tenant in ("acme", "beta"):
        iid = add_interaction(api.db, api.ids[tenant], model="m", request={}, response_text="Hi.")
        correction = "Mail jane@example.com, card 4111 1111 1111 1111"
        r = api.client.post(
            "/v1/feedback", json={"interaction_id": iid, "correction": correction}, headers=api.keys[tenant]
        )
        assert r.status_code == 201, r.text
        line = json.dumps({"messages": [{"role": "user", "content": "I am jane@example.com"}], "correction": "ok"})
        imported = api.client.post(
            "/v1/feedback/import", files={"file": ("f.jsonl", line.encode())}, headers=api.keys[tenant]
        )
        assert imported.status_code == 201, imported.text
        with api.db.session() as s:
            stored[tenant] = {
                f.source: f for f in s.scalars(select(Feedback).where(Feedback.tenant_id == api.ids[tenant]))
            }
    assert stored["acme"]["api"].correction == f"Mail {EMAIL}, card {CARD}"
    assert stored["acme"]["import"].messages == [{"role": "user", "content": f"I am {EMAIL}"}]
    assert stored["beta"]["api"].correction == "Mail jane@example.com, card 4111 1111 1111 1111"
    assert stored["beta"]["import"].messages == [{"role": "user", "content": "I am jane@example.com"}]


async def test_purge_unloads_adapters_from_engines_that_need_a_key() -> None:
    import httpx

    from adapters.engine_checks import EngineExpectation
    from adapters.engines import Engine, EnginePool, bearer

    seen: list[tuple[str, str | None]] = []

    def engine(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("authorization")))
        if request.headers.get("authorization") != "Bearer engine-key":
            return httpx.Response(401, json={"error": "Unauthorized"})
        return httpx.Response(200, text="ok")

    owned = Engine(url="http://engine", headers=bearer("engine-key"))
    owned.resident["lv-purged"] = "/cache/lv-purged"
    async with httpx.AsyncClient(transport=httpx.MockTransport(engine)) as client:
        pool = EnginePool(
            [owned], client, expect=EngineExpectation(served_name="base", max_lora_rank=16), max_resident=2
        )
        assert await pool.unload(["lv-purged"]) == 1
    assert seen == [("/v1/unload_lora_adapter", "Bearer engine-key")] and not owned.resident
