"""OpenAI's models routes (gateway/routes/models.py, adapters/model_names.py,
adapters/version_deletion.py) on the real app: listing, paging, retrieving and deleting
fine-tuned models, each tenant seeing and touching only its own.

Tenants "acme" and "beta" both own an adapter "support"; every body is checked against
OpenAI's schema. (Unloading a deleted version from an engine: tests/gateway/test_proxy.py.)
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, update

from adapters import registry
from core.errors import TailorError
from core.models import AdapterVersion, Feedback, Interaction
from tests.adapters.test_validation import tiny_config, write_adapter
from tests.apputil import ADMIN, TenantsApi, error, make_app, ok, serve_tenants
from tests.dbutil import add_interaction
from tests.openai_schema import validate

BASE = "tiny-base"
_serial = itertools.count(1)


class Api(TenantsApi):
    tmp: Path

    def register(self, tenant: str, name: str, *, activate: bool = True, bytes_of: str = "") -> dict[str, Any]:
        """A new version of `tenant`'s adapter `name`: new random weights, or those named `bytes_of`
        (the same digest each time)."""
        source = self.tmp / f"lora-{bytes_of or next(_serial)}"
        if not source.exists():
            write_adapter(source)
        body = {"name": name, "path": str(source), "activate": activate}
        r = self.client.post(f"/admin/tenants/{tenant}/adapters/register", json=body, headers=ADMIN)
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    def models(self, tenant: str, **params: Any) -> dict[str, Any]:
        body = ok(self.client.get("/v1/models", params=params, headers=self.keys[tenant]))
        validate(body, "ListModelsResponse")
        for card in body["data"]:
            validate(card, "Model")
        return body  # type: ignore[no-any-return]

    def listed(self, tenant: str, **params: Any) -> list[str]:
        return [m["id"] for m in self.models(tenant, **params)["data"]]

    def delete(self, tenant: str, model: str) -> Any:
        return self.client.delete(f"/v1/models/{model}", headers=self.keys[tenant])

    def digest(self, tenant: str, name: str, version: int) -> str:
        info = registry.get_adapter(self.db, self.ids[tenant], name)
        return next(v.digest for v in info.versions if v.version == version)

    def audit(self, tenant: str, action: str) -> list[dict[str, Any]]:
        return ok(self.client.get("/v1/audit", params={"action": action}, headers=self.keys[tenant]))["data"]  # type: ignore[no-any-return]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    base = tmp_path / "tiny-llama"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(tiny_config()))
    app = make_app(tmp_path / "data", base_model_path=base, base_model_name=BASE)
    with serve_tenants(app, Api) as api:
        api.tmp = tmp_path
        yield api


def acme_and_beta(api: Api) -> None:
    """acme: support v1 (active), v2 and v3 (registered); draft v1 (registered, never active).
    beta: support v1 (active), v2 (registered, the same bytes as acme's v2); beta-only v1."""
    api.register("acme", "support")
    api.register("acme", "support", activate=False, bytes_of="shared")
    api.register("acme", "support", activate=False)
    api.register("acme", "draft", activate=False)
    api.register("beta", "support")
    api.register("beta", "support", activate=False, bytes_of="shared")
    api.register("beta", "beta-only")


ACME = [BASE, "draft@v1", "support", "support@v1", "support@v2", "support@v3"]


# --- listing ----------------------------------------------------------------------------------


def test_lists_every_name_the_tenant_can_call_and_nothing_of_others(api: Api) -> None:
    acme_and_beta(api)
    body = api.models("acme")
    assert set(body) == {"object", "data"}  # a plain listing is OpenAI's bare list
    assert [m["id"] for m in body["data"]] == ACME
    owners = {m["id"]: m["owned_by"] for m in body["data"]}
    assert owners[BASE] == "tailor" and {owners[n] for n in ACME[1:]} == {"acme"}
    assert api.listed("beta") == [BASE, "beta-only", "beta-only@v1", "support", "support@v1", "support@v2"]

    # Exactly what the router accepts: each listed name resolves, the names around them do not.
    acme = api.ids["acme"]
    for name in ACME:
        registry.route(api.db, acme, name, BASE)
    for name in ("draft", "support@v4", "support@v01", "beta-only", "beta-only@v1"):
        with pytest.raises(TailorError):
            registry.route(api.db, acme, name, BASE)


def test_versions_that_cannot_serve_are_not_listed(api: Api) -> None:
    acme_and_beta(api)
    with api.db.session() as s:
        s.execute(
            update(AdapterVersion)
            .where(AdapterVersion.digest == api.digest("acme", "support", 3))
            .values(state="failed")
        )
    assert api.listed("acme") == [BASE, "draft@v1", "support", "support@v1", "support@v2"]
    error(api.client.get("/v1/models/support@v3", headers=api.keys["acme"]), 404)


def test_listing_is_two_queries_however_many_versions(api: Api) -> None:
    for n in range(4):
        for _ in range(3):
            api.register("acme", f"bulk-{n}", activate=False)
        api.client.post(f"/admin/tenants/acme/adapters/bulk-{n}/activate", json={"version": 1}, headers=ADMIN)
    api.listed("acme")  # the key is cached from here on
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(api.db.engine, "before_cursor_execute", seen)
    try:
        ids = api.listed("acme")
    finally:
        event.remove(api.db.engine, "before_cursor_execute", seen)
    assert len(ids) == 1 + 4 * 4
    # one for the adapters and their versions, one for the jobs' checkpoints
    assert len([s for s in statements if "adapter" in s.lower() or "job_checkpoints" in s.lower()]) == 2, statements


# --- paging ---------------------------------------------------------------------------------


def test_pages_with_after_and_limit(api: Api) -> None:
    acme_and_beta(api)
    pages, after = [], None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"after": after} if after else {})
        body = api.models("acme", **params)
        ids = [m["id"] for m in body["data"]]
        pages.append(ids)
        assert (body["first_id"], body["last_id"]) == (ids[0], ids[-1])
        if not body["has_more"]:
            break
        after = body["last_id"]
    assert pages == [ACME[0:2], ACME[2:4], ACME[4:6]]

    assert api.listed("acme", after=BASE) == ACME[1:]
    assert api.listed("acme", limit=1000) == ACME
    # A cursor keeps its place when its name is gone (or never was).
    assert api.listed("acme", after="support@v1", limit=1) == ["support@v2"]
    assert api.listed("acme", after="sup") == ACME[2:]
    assert api.listed("acme", after="support@v9") == []
    last = api.models("acme", after="support@v3")
    assert last == {"object": "list", "data": [], "has_more": False}
    for bad in ("0", "1001", "-1", "x"):
        assert error(api.client.get(f"/v1/models?limit={bad}", headers=api.keys["acme"]), 400)["param"] == "limit"


# --- retrieving ------------------------------------------------------------------------------


def test_retrieves_each_listed_name_and_no_other(api: Api) -> None:
    acme_and_beta(api)
    listed = {m["id"]: m for m in api.models("acme")["data"]}
    for name, card in listed.items():
        got = ok(api.client.get(f"/v1/models/{name}", headers=api.keys["acme"]))
        validate(got, "Model")
        assert got == card
    for name in ("draft", "support@v4", "support@v", "nothing", "beta-only", "beta-only@v1"):
        err = error(api.client.get(f"/v1/models/{name}", headers=api.keys["acme"]), 404)
        assert err["code"] == "model_not_found"
        assert err["message"] == f"The model `{name}` does not exist or you do not have access to it."


# --- deleting ------------------------------------------------------------------------------


def test_delete_refusals_change_nothing(api: Api) -> None:
    acme_and_beta(api)
    ok(api.client.post("/v1/adapters/support/canary", json={"version": 3, "fraction": 0.5}, headers=api.keys["acme"]))
    refusals = {
        BASE: (400, "cannot_delete_base_model"),
        "support": (400, "cannot_delete_alias"),
        "support@v1": (400, "model_version_active"),
        "support@v3": (400, "model_version_in_canary"),
        "draft": (404, "model_not_found"),  # not callable: no active version
        "support@v9": (404, "model_not_found"),
        "beta-only": (404, "model_not_found"),  # beta's
        "beta-only@v1": (404, "model_not_found"),
    }
    for model, (status, code) in refusals.items():
        err = error(api.delete("acme", model), status, param="model")
        assert err["code"] == code, (model, err)
    alias = error(api.delete("acme", "support"), 400)["message"]
    assert "DELETE /v1/adapters/support" in alias and "support@vN" in alias
    assert "activate" in error(api.delete("acme", "support@v1"), 400)["message"]
    assert "DELETE /v1/adapters/support/canary" in error(api.delete("acme", "support@v3"), 400)["message"]

    assert api.listed("acme") == ACME
    assert api.audit("acme", "adapter.version.delete") == []


def test_delete_a_version(api: Api) -> None:
    acme_and_beta(api)
    acme = api.ids["acme"]
    digest = api.digest("acme", "support", 2)
    version_id = registry.resolve(api.db, acme, "support@v2", BASE).version_id
    store = api.app.state.services.store
    interaction = add_interaction(api.db, acme, model="support@v2", adapter_version_id=version_id)
    feedback = {"interaction_id": interaction, "rating": "good"}
    assert api.client.post("/v1/feedback", json=feedback, headers=api.keys["acme"]).status_code == 201

    r = api.delete("acme", "support@v2")
    body = ok(r)
    validate(body, "DeleteModelResponse")
    assert body == {"id": "support@v2", "object": "model", "deleted": True}

    assert api.listed("acme") == [BASE, "draft@v1", "support", "support@v1", "support@v3"]
    error(api.client.get("/v1/models/support@v2", headers=api.keys["acme"]), 404)
    assert error(api.delete("acme", "support@v2"), 404)["code"] == "model_not_found"
    assert [v["version"] for v in ok(api.client.get("/v1/adapters/support", headers=api.keys["acme"]))["versions"]] == [
        1,
        3,
    ]
    # beta's support@v2, the same bytes, still serves: its files stay until it goes too.
    assert "support@v2" in api.listed("beta") and store.exists(digest)
    ok(api.delete("beta", "support@v2"))
    assert not store.exists(digest)

    # What was logged for the version stays.
    with api.db.session() as s:
        assert s.get(Interaction, interaction) is not None
        assert s.query(Feedback).filter_by(interaction_id=interaction).count() == 1

    [event] = api.audit("acme", "adapter.version.delete")
    assert event["target"] == "support" and event["actor"].startswith("key:")
    assert event["before"]["versions"] == [1, 2, 3] and event["after"]["versions"] == [1, 3]
    assert event["after"]["version"]["version"] == 2 and event["after"]["version"]["digest"] == digest


def test_deleting_an_adapter_removes_the_files_only_it_held(api: Api) -> None:
    acme_and_beta(api)
    shared, own = api.digest("acme", "support", 2), api.digest("acme", "support", 3)
    store = api.app.state.services.store
    assert store.exists(shared) and store.exists(own)

    ok(api.client.delete("/v1/adapters/support", headers=api.keys["acme"]))
    assert api.listed("acme") == [BASE, "draft@v1"]
    assert not store.exists(own)
    # beta's support@v2 has the same bytes as acme's v2: they stay while it serves.
    assert store.exists(shared) and "support@v2" in api.listed("beta")
    error(api.client.delete("/v1/adapters/support", headers=api.keys["acme"]), 404)


def test_deleting_the_last_version_keeps_the_name_and_never_reuses_its_number(api: Api) -> None:
    api.register("acme", "draft", activate=False)
    ok(api.delete("acme", "draft@v1"))
    assert api.listed("acme") == [BASE]
    assert ok(api.client.get("/v1/adapters/draft", headers=api.keys["acme"]))["versions"] == []
    # A number once given is never given again: `draft@v1` stays deleted, never other weights.
    api.register("acme", "draft", activate=False)
    assert api.listed("acme") == [BASE, "draft@v2"]
    error(api.client.get("/v1/models/draft@v1", headers=api.keys["acme"]), 404)
