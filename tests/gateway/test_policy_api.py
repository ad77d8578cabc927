"""`/v1/policy`, `/admin/tenants/{t}/policy` and `/v1/adapters/{name}/drift` on the real app
(no engine): defaults, partial updates, OpenAI-shaped 400s, admin access, tenant isolation."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from adapters import registry
from core.ids import new_id, utcnow
from core.models import AdapterVersion, Feedback, Interaction
from tests.adapters.test_validation import tiny_config, write_adapter
from tests.apputil import ADMIN, create_tenant, error, make_app, ok, tenant_key
from trainer.gates import GateConfig

DEFAULTS = {
    "retrain": "on_demand",
    "retrain_min_feedback": 50,
    "retrain_interval_hours": 24.0,
    "auto_promote": False,
    "canary_fraction": 0.0,
    "gates": GateConfig().to_dict(),
    "reward_grader": None,
    "merge_above_share": None,
    "merge_min_requests": 1000,
    "last_triggered_at": None,
}


@dataclass
class Api:
    app: FastAPI
    client: TestClient
    keys: dict[str, dict[str, str]]  # "acme"/"beta" -> auth header
    ids: dict[str, str]  # "acme"/"beta" -> tenant id
    names: dict[str, str]  # "acme"/"beta" -> this test's tenant name
    tmp: Path

    def admin(self, tenant: str) -> str:
        return f"/admin/tenants/{self.names[tenant]}/policy"


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, TestClient]]:
    """One app for the module (starting one is the slow part); each test gets fresh tenants."""
    tmp = tmp_path_factory.mktemp("policy-api")
    base = tmp / "tiny-llama"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(tiny_config()))
    app = make_app(tmp / "data", base_model_path=base)
    with TestClient(app) as client:
        yield app, client


_serial = itertools.count()


@pytest.fixture
def api(app_client: tuple[FastAPI, TestClient], tmp_path: Path) -> Api:
    app, client = app_client
    keys, ids, names = {}, {}, {}
    n = next(_serial)
    for role in ("acme", "beta"):
        name = names[role] = f"{role}-{n}"
        ids[role] = create_tenant(client, name)
        keys[role] = tenant_key(client, name)
    return Api(app, client, keys, ids, names, tmp_path)


# --- tenant routes ---------------------------------------------------------------------


def test_get_defaults(api: Api) -> None:
    assert ok(api.client.get("/v1/policy", headers=api.keys["acme"])) == DEFAULTS


def test_put_changes_only_given_fields(api: Api) -> None:
    c, acme = api.client, api.keys["acme"]
    body = ok(c.put("/v1/policy", json={"retrain": "feedback_count", "retrain_min_feedback": 5}, headers=acme))
    assert body == {**DEFAULTS, "retrain": "feedback_count", "retrain_min_feedback": 5}
    body = ok(
        c.put(
            "/v1/policy",
            json={"auto_promote": True, "canary_fraction": 0.2, "gates": {"primary_metric": "token_f1"}},
            headers=acme,
        )
    )
    assert body == {
        **DEFAULTS,
        "retrain": "feedback_count",
        "retrain_min_feedback": 5,
        "auto_promote": True,
        "canary_fraction": 0.2,
        "gates": {**DEFAULTS["gates"], "primary_metric": "token_f1"},  # type: ignore[dict-item]
    }
    assert ok(c.get("/v1/policy", headers=acme)) == body
    # An empty body (or nulls) changes nothing.
    assert ok(c.put("/v1/policy", json={}, headers=acme)) == body
    assert ok(c.put("/v1/policy", json={"retrain": None}, headers=acme)) == body


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"retrain": "weekly"}, "retrain"),
        ({"retrain_min_feedback": 0}, "retrain_min_feedback"),
        ({"retrain_min_feedback": "many"}, "retrain_min_feedback"),
        ({"retrain_interval_hours": 0}, "retrain_interval_hours"),
        ({"canary_fraction": 1}, "canary_fraction"),
        ({"canary_fraction": -0.5}, "canary_fraction"),
        ({"auto_promote": "perhaps"}, "auto_promote"),
        ({"gates": "strict"}, "gates"),
        ({"gates": {"bogus": 1}}, "gates"),
        ({"gates": {"primary_metric": "bleu"}}, "gates.primary_metric"),
        ({"gates": {"noise": {"token_f1": -1}}}, "gates.noise.token_f1"),
        ({"gates": {"min_examples": 0}}, "gates.min_examples"),
        ({"merge_above_share": 0}, "merge_above_share"),
        ({"merge_above_share": 1.01}, "merge_above_share"),
        ({"merge_above_share": "0.5"}, "merge_above_share"),
        ({"merge_above_share": True}, "merge_above_share"),
        ({"merge_min_requests": 0}, "merge_min_requests"),
        ({"merge_min_requests": 2**31}, "merge_min_requests"),
        ({"merge_min_requests": 10.5}, "merge_min_requests"),
    ],
)
def test_put_refuses_bad_values_with_openai_errors(api: Api, payload: dict, param: str) -> None:
    c, acme = api.client, api.keys["acme"]
    before = ok(c.put("/v1/policy", json={"retrain": "schedule"}, headers=acme))
    # A valid field next to the bad one must not be stored either.
    extra = {} if "auto_promote" in payload else {"auto_promote": True}
    err = error(c.put("/v1/policy", json={**payload, **extra}, headers=acme), 400, param)
    assert err["type"] == "invalid_request_error"
    assert ok(c.get("/v1/policy", headers=acme)) == before  # nothing stored


def test_put_a_reward_grader_checked_as_the_grader_routes_check_it(api: Api) -> None:
    c, acme = api.client, api.keys["acme"]
    grader = {"type": "string_check", "name": "p", "input": "{{ sample.output_text }}", "reference": "please",
              "operation": "ilike"}  # fmt: skip
    assert ok(c.put("/v1/policy", json={"reward_grader": grader}, headers=acme))["reward_grader"] == grader
    python = {"type": "python", "name": "py", "source": "def grade(sample, item):\n    return 1.0\n"}
    refused = error(c.put("/v1/policy", json={"reward_grader": python}, headers=acme), 400, "reward_grader.type")
    assert refused["code"] == "python_grader_disabled"
    # other changes leave it; null removes it
    assert ok(c.put("/v1/policy", json={"auto_promote": True}, headers=acme))["reward_grader"] == grader
    assert ok(c.put("/v1/policy", json={"reward_grader": None}, headers=acme))["reward_grader"] is None


def test_put_a_merge_share_and_null_turns_it_off(api: Api) -> None:
    c, acme = api.client, api.keys["acme"]
    body = ok(c.put("/v1/policy", json={"merge_above_share": 0.5, "merge_min_requests": 200}, headers=acme))
    assert (body["merge_above_share"], body["merge_min_requests"]) == (0.5, 200)
    assert ok(c.put("/v1/policy", json={"auto_promote": True}, headers=acme))["merge_above_share"] == 0.5
    body = ok(c.put("/v1/policy", json={"merge_above_share": None}, headers=acme))
    assert (body["merge_above_share"], body["merge_min_requests"]) == (None, 200)
    assert ok(c.get("/v1/policy", headers=api.keys["beta"])) == DEFAULTS  # another tenant's is untouched


def test_put_refuses_a_body_that_is_not_json(api: Api) -> None:
    r = api.client.put(
        "/v1/policy", content=b"{not json", headers={**api.keys["acme"], "content-type": "application/json"}
    )
    error(r, 400)


def test_put_refuses_unknown_fields(api: Api) -> None:
    c, acme = api.client, api.keys["acme"]
    error(c.put("/v1/policy", json={"retrian": "off"}, headers=acme), 400, "retrian")
    # A typo next to a valid field stores neither.
    error(c.put("/v1/policy", json={"retrain": "off", "canary": 0.5}, headers=acme), 400, "canary")
    error(c.put(api.admin("acme"), json={"retrian": "off"}, headers=ADMIN), 400, "retrian")
    assert ok(c.get("/v1/policy", headers=acme)) == DEFAULTS


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"retrain_min_feedback": True}, "retrain_min_feedback"),
        ({"retrain_interval_hours": True}, "retrain_interval_hours"),
        ({"canary_fraction": False}, "canary_fraction"),
        ({"auto_promote": 1}, "auto_promote"),
        ({"auto_promote": "true"}, "auto_promote"),
        ({"retrain_min_feedback": "5"}, "retrain_min_feedback"),
    ],
)
def test_put_refuses_values_of_the_wrong_json_type(api: Api, payload: dict, param: str) -> None:
    c, acme = api.client, api.keys["acme"]
    error(c.put("/v1/policy", json=payload, headers=acme), 400, param)
    assert ok(c.get("/v1/policy", headers=acme)) == DEFAULTS


def test_policy_needs_a_key(api: Api) -> None:
    error(api.client.get("/v1/policy"), 401)
    error(api.client.put("/v1/policy", json={"retrain": "off"}), 401)
    error(api.client.get("/v1/policy", headers={"authorization": "Bearer sk-nope"}), 401)
    error(api.client.get("/v1/policy", headers=ADMIN), 401)  # the admin key is no tenant key


def test_tenants_are_isolated(api: Api) -> None:
    c = api.client
    ok(c.put("/v1/policy", json={"retrain": "off", "canary_fraction": 0.5}, headers=api.keys["acme"]))
    assert ok(c.get("/v1/policy", headers=api.keys["beta"])) == DEFAULTS
    ok(c.put("/v1/policy", json={"retrain": "drift"}, headers=api.keys["beta"]))
    acme = ok(c.get("/v1/policy", headers=api.keys["acme"]))
    assert (acme["retrain"], acme["canary_fraction"]) == ("off", 0.5)


# --- admin routes ----------------------------------------------------------------------


def test_admin_reads_and_writes_any_tenants_policy(api: Api) -> None:
    c = api.client
    assert ok(c.get(api.admin("acme"), headers=ADMIN)) == DEFAULTS
    body = ok(c.put(api.admin("acme"), json={"retrain": "schedule", "retrain_interval_hours": 6}, headers=ADMIN))
    assert (body["retrain"], body["retrain_interval_hours"]) == ("schedule", 6.0)
    assert ok(c.get("/v1/policy", headers=api.keys["acme"])) == body  # the tenant sees it
    assert ok(c.get(f"/admin/tenants/{api.ids['acme']}/policy", headers=ADMIN)) == body  # by id too
    assert ok(c.get(api.admin("beta"), headers=ADMIN)) == DEFAULTS

    error(c.put(api.admin("acme"), json={"retrain": "hourly"}, headers=ADMIN), 400, "retrain")
    error(c.put(api.admin("acme"), json={"gates": {"x": 1}}, headers=ADMIN), 400, "gates")
    assert ok(c.get(api.admin("acme"), headers=ADMIN)) == body


def test_admin_policy_errors(api: Api) -> None:
    c = api.client
    assert error(c.get("/admin/tenants/nobody/policy", headers=ADMIN), 404)["code"] == "tenant_not_found"
    error(c.put("/admin/tenants/nobody/policy", json={"retrain": "off"}, headers=ADMIN), 404)
    error(c.get(api.admin("acme"), headers=api.keys["acme"]), 401)  # a tenant key is no admin key
    error(c.get(api.admin("acme")), 401)
    error(c.put(api.admin("acme"), json={"retrain": "off"}, headers=api.keys["beta"]), 401)
    assert ok(c.get("/v1/policy", headers=api.keys["acme"])) == DEFAULTS


# --- drift -----------------------------------------------------------------------------


def register(api: Api, tenant: str, name: str) -> str:
    services = api.app.state.services
    v = registry.register_dir(
        services.db,
        services.store,
        services.limits,
        tenant_id=api.ids[tenant],
        name=name,
        source_dir=write_adapter(api.tmp / "lora"),
        base_model_name=services.settings.base_model_name,
        actor="test",
    )
    return v.id


def test_drift_of_a_fresh_adapter(api: Api) -> None:
    register(api, "acme", "support")
    body = ok(api.client.get("/v1/adapters/support/drift", headers=api.keys["acme"]))
    assert (body["adapter_name"], body["version"], body["drifted"]) == ("support", 1, False)
    assert body["reason"] == "level not established yet (0/20 judged answers)"
    empty = {"judged": 0, "good": 0, "bad": 0, "corrections": 0, "share_good": None, "correction_rate": None}
    assert body["promoted_level"] == empty and body["recent"] == empty
    error(api.client.get("/v1/adapters/support/drift"), 401)


def test_drift_reports_a_drifted_adapter(api: Api) -> None:
    vid = register(api, "acme", "support")
    db = api.app.state.services.db
    promoted = utcnow() - timedelta(days=20)
    with db.session() as s:
        s.get(AdapterVersion, vid).promoted_at = promoted  # type: ignore[union-attr]
        for when, ratings in (
            (promoted + timedelta(days=1), ["good"] * 20),
            (utcnow() - timedelta(days=1), ["good"] * 10 + ["bad"] * 10),
        ):
            for rating in ratings:
                iid = new_id("chatcmpl")
                s.add(
                    Interaction(
                        id=iid,
                        tenant_id=api.ids["acme"],
                        endpoint="chat.completions",
                        model="support",
                        adapter_version_id=vid,
                        request={},
                        status_code=200,
                        created_at=when,
                    )
                )
                s.add(
                    Feedback(
                        id=new_id("fb"),
                        tenant_id=api.ids["acme"],
                        interaction_id=iid,
                        adapter_version_id=vid,
                        model="support",
                        rating=rating,
                        created_at=when,
                    )
                )
    body = ok(api.client.get("/v1/adapters/support/drift", headers=api.keys["acme"]))
    assert body["drifted"] is True
    assert (body["promoted_level"]["share_good"], body["recent"]["share_good"]) == (1.0, 0.5)
    assert body["reason"] == "share of good answers fell from 1.00 to 0.50"
    # beta cannot see acme's adapter, drifted or not.
    error(api.client.get("/v1/adapters/support/drift", headers=api.keys["beta"]), 404, "model")


def test_drift_of_an_adapter_without_an_active_version(api: Api) -> None:
    services = api.app.state.services
    registry.register_dir(
        services.db,
        services.store,
        services.limits,
        tenant_id=api.ids["acme"],
        name="draft",
        source_dir=write_adapter(api.tmp / "lora"),
        base_model_name=services.settings.base_model_name,
        activate=False,
        actor="test",
    )
    body = ok(api.client.get("/v1/adapters/draft/drift", headers=api.keys["acme"]))
    assert body == {
        "adapter_name": "draft",
        "version": None,
        "promoted_level": None,
        "recent": None,
        "drifted": False,
        "reason": "no promoted version",
    }


def test_drift_of_an_unknown_adapter_is_404(api: Api) -> None:
    register(api, "acme", "support")
    unknown = error(api.client.get("/v1/adapters/ghost/drift", headers=api.keys["acme"]), 404, "model")
    foreign = error(api.client.get("/v1/adapters/support/drift", headers=api.keys["beta"]), 404, "model")
    assert unknown["code"] == foreign["code"] == "model_not_found"
    assert error(api.client.get("/v1/adapters/ghost", headers=api.keys["acme"]), 404)["code"] == "model_not_found"
