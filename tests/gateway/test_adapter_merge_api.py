"""`POST /v1/adapters/{name}/merge`: a merge is queued for a worker (202) and read back by id;
only the tenant's own adapter versions can be merged, and no fine-tuning route shows a merge."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from core.models import AuditEvent, Tenant
from tests.adapters.test_model_validation import write_model
from tests.gateway.gateway_world import ADMIN, Gateway
from tests.gateway.module_gateway import module_gateway
from tests.openai_schema import validate

pytestmark = pytest.mark.asyncio(loop_scope="module")

shared = module_gateway("merge")


def _support(gw: Gateway, *, model_too: bool = False) -> None:
    """`support`: v1 an adapter (active); with model_too, v2 a whole model (then active)."""
    gw.register_adapter("support")
    if model_too:
        gw.register("support", write_model(gw.tmp / f"model-{gw.tenant_id}"))


async def _merge(gw: Gateway, body: dict[str, Any] | None = None, name: str = "support") -> Any:
    return await gw.http.post(f"/v1/adapters/{name}/merge", json=body, headers=gw.auth)


async def test_a_merge_is_queued_and_read_back(gw: Gateway) -> None:
    _support(gw)
    r = await _merge(gw)
    assert r.status_code == 202, r.text
    merge = r.json()
    assert merge["id"].startswith("merge-") and merge["object"] == "adapter.merge"
    assert (merge["adapter_name"], merge["source_version"], merge["status"]) == ("support", 1, "queued")
    assert merge["activate"] is False and merge["model"] is None and merge["version"] is None

    got = await gw.http.get(f"/v1/adapters/support/merges/{merge['id']}", headers=gw.auth)
    assert got.status_code == 200 and got.json() == merge

    # Asked for once more, activating, by version number.
    again = await _merge(gw, {"version": 1, "activate": True})
    assert again.status_code == 202 and again.json()["activate"] is True and again.json()["id"] != merge["id"]

    with gw.services.db.session() as s:
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "adapter.merge")))
    mine = [e for e in events if e.tenant_id == gw.tenant_id]
    assert len(mine) == 2 and mine[0].target == "support" and mine[0].after["version"] == 1


async def test_no_fine_tuning_route_shows_a_merge(gw: Gateway) -> None:
    _support(gw)
    merge_id = (await _merge(gw)).json()["id"]
    listed = await gw.http.get("/v1/fine_tuning/jobs", headers=gw.auth)
    assert listed.status_code == 200
    validate(listed.json(), "ListPaginatedFineTuningJobsResponse")
    assert listed.json()["data"] == []
    for path in ("", "/events", "/checkpoints"):
        r = await gw.http.get(f"/v1/fine_tuning/jobs/{merge_id}{path}", headers=gw.auth)
        assert r.status_code == 404, (path, r.text)
        validate(r.json(), "ErrorResponse")
    r = await gw.http.post(f"/v1/fine_tuning/jobs/{merge_id}/cancel", headers=gw.auth)
    assert r.status_code == 404


async def test_a_whole_model_cannot_be_merged(gw: Gateway) -> None:
    _support(gw, model_too=True)
    for body in (None, {"version": 2}):
        r = await _merge(gw, body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "not_an_adapter" and r.json()["error"]["param"] == "version"
    assert (await _merge(gw, {"version": 1})).status_code == 202


async def test_unknown_names_and_versions_are_404(gw: Gateway) -> None:
    assert (await _merge(gw, name="nothing")).status_code == 404
    _support(gw)
    r = await _merge(gw, {"version": 7})
    assert r.status_code == 404 and r.json()["error"]["code"] == "version_not_found"
    r = await gw.http.get("/v1/adapters/support/merges/merge-0000", headers=gw.auth)
    assert r.status_code == 404 and r.json()["error"]["code"] == "merge_not_found"


async def test_a_tenant_cannot_merge_or_read_another_tenants_adapter(gw: Gateway, other: Gateway) -> None:
    _support(gw)
    merge_id = (await _merge(gw)).json()["id"]
    r = await _merge(other)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = await other.http.get(f"/v1/adapters/support/merges/{merge_id}", headers=other.auth)
    assert r.status_code == 404
    # The same name of its own does not open the other tenant's merge either.
    _support(other)
    r = await other.http.get(f"/v1/adapters/support/merges/{merge_id}", headers=other.auth)
    assert r.status_code == 404 and r.json()["error"]["code"] == "merge_not_found"


async def test_malformed_requests_are_refused(gw: Gateway) -> None:
    _support(gw)
    for body in ({"version": "1; DROP TABLE jobs"}, {"activate": "maybe"}, {"version": [1]}):
        assert (await _merge(gw, body)).status_code in (400, 422), body
    for name in ("..", "support@v1", "support%2F..%2F.."):
        r = await _merge(gw, name=name)
        assert r.status_code in (404, 405), (name, r.text)
    assert (await gw.http.post("/v1/adapters/support/merge")).status_code == 401


async def test_an_operator_merges_for_a_tenant(gw: Gateway) -> None:
    _support(gw)
    with gw.services.db.session() as s:
        tenant = s.get(Tenant, gw.tenant_id)
        assert tenant is not None
        name = tenant.name
    r = await gw.http.post(f"/admin/tenants/{name}/adapters/support/merge", json={"version": 1}, headers=ADMIN)
    assert r.status_code == 202, r.text
    got = await gw.http.get(f"/v1/adapters/support/merges/{r.json()['id']}", headers=gw.auth)
    assert got.status_code == 200 and got.json()["status"] == "queued"
