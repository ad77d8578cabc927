"""`/v1/usage`, `/admin/usage` and `/v1/adapters/{name}/stats` on the real app (no engine),
over the interactions of tests.gateway.test_usage's world."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.adapters.test_validation import tiny_config
from tests.apputil import ADMIN, error, make_app, ok, tenant_key
from tests.gateway.test_usage import BASE, World, add, build, rate


@dataclass
class Api:
    app: FastAPI
    client: TestClient
    keys: dict[str, dict[str, str]]
    world: World


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    base_dir = tmp_path / "tiny-llama"
    base_dir.mkdir()
    (base_dir / "config.json").write_text(json.dumps(tiny_config()))
    app = make_app(
        tmp_path,
        base_model_path=base_dir,
        data_dir=tmp_path / "data",
        run_trainer=False,
        base_model_name=BASE,
        prices={BASE: {"prompt": 0.1, "completion": 0.2}, "acme/support": {"prompt": 1.0, "completion": 2.0}},
    )
    with TestClient(app) as client:
        world = build(app.state.services.db, tmp_path)
        keys = {name: tenant_key(client, name) for name in ("acme", "beta")}
        yield Api(app, client, keys, world)


RANGE = {"since": "2024-03-01", "until": "2024-03-03"}


def test_tenant_sees_only_own_usage(api: Api) -> None:
    body = ok(api.client.get("/v1/usage", params=RANGE, headers=api.keys["acme"]))
    assert body["object"] == "list"
    groups = ["day", "model", "version", "tier"]
    assert (body["since"], body["until"], body["group_by"]) == ("2024-03-01", "2024-03-03", groups)
    assert {d["tenant"] for d in body["data"]} == {"acme"}
    assert {d["tier"] for d in body["data"]} == {"interactive"}
    assert [(d["day"], d["model"], d["adapter_version"]) for d in body["data"]] == [
        ("2024-03-01", "support", 1),
        ("2024-03-01", BASE, None),
        ("2024-03-02", "support", 2),
        ("2024-03-02", BASE, None),
    ]
    assert body["totals"] == {
        "requests": 11,
        "errors": 2,
        "client_closed": 1,
        "prompt_tokens": 4500,
        "completion_tokens": 2200,
        "cost": pytest.approx(0.05 + 0.04 + 8.0),  # support priced by the override
    }
    beta = ok(api.client.get("/v1/usage", params={**RANGE, "group_by": "model"}, headers=api.keys["beta"]))
    assert {(d["tenant"], d["model"]) for d in beta["data"]} == {("beta", BASE), ("beta", "helper")}
    # helper has no override and there is no "adapter" price: it costs what the base costs.
    helper = next(d for d in beta["data"] if d["model"] == "helper")
    assert helper["cost"] == pytest.approx(0.1 + 0.2)


def test_default_range_is_the_last_30_days(api: Api) -> None:
    today = datetime.now(timezone.utc).date()
    add(api.world.db, api.world.acme, datetime.now(timezone.utc) - timedelta(days=29), prompt=1)
    add(api.world.db, api.world.acme, datetime.now(timezone.utc) - timedelta(days=31), prompt=10)
    body = ok(api.client.get("/v1/usage", params={"group_by": ""}, headers=api.keys["acme"]))
    assert (body["since"], body["until"]) == ((today - timedelta(days=29)).isoformat(), today.isoformat())
    assert body["group_by"] == []
    assert body["totals"]["prompt_tokens"] == 1


def test_csv_download(api: Api) -> None:
    r = api.client.get("/v1/usage", params={**RANGE, "format": "csv"}, headers=api.keys["acme"])
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == 'attachment; filename="usage-acme-2024-03-01-2024-03-03.csv"'
    parsed = list(csv.DictReader(io.StringIO(r.text)))
    assert [(d["tenant"], d["day"], d["model"], d["adapter_version"]) for d in parsed][:2] == [
        ("acme", "2024-03-01", "support", "1"),
        ("acme", "2024-03-01", BASE, ""),
    ]
    assert sum(int(d["requests"]) for d in parsed) == 11


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"since": "2024-01-01", "until": "2025-01-02"}, "since"),  # 368 days
        ({"since": "2024-03-02", "until": "2024-03-01"}, "until"),
        ({"since": "March"}, "since"),
        ({"group_by": "day,color"}, "group_by"),
        ({"format": "xml"}, "format"),
    ],
)
def test_bad_parameters_are_openai_400s(api: Api, params: dict[str, str], param: str) -> None:
    error(api.client.get("/v1/usage", params=params, headers=api.keys["acme"]), 400, param)
    error(api.client.get("/admin/usage", params=params, headers=ADMIN), 400, param)


def test_auth(api: Api) -> None:
    error(api.client.get("/v1/usage"), 401)
    error(api.client.get("/admin/usage", headers=api.keys["acme"]), 401)  # a tenant key is not the admin key
    error(api.client.get("/v1/adapters/support/stats"), 401)


def test_admin_sees_all_tenants_or_one(api: Api) -> None:
    body = ok(api.client.get("/admin/usage", params={**RANGE, "group_by": "model"}, headers=ADMIN))
    assert {d["tenant"] for d in body["data"]} == {"acme", "beta"}
    assert body["totals"]["requests"] == 13
    one = ok(api.client.get("/admin/usage", params={**RANGE, "tenant": "beta"}, headers=ADMIN))
    assert {d["tenant"] for d in one["data"]} == {"beta"}
    assert one["totals"]["requests"] == 2
    by_id = ok(api.client.get("/admin/usage", params={**RANGE, "tenant": api.world.beta}, headers=ADMIN))
    assert by_id["totals"] == one["totals"]
    r = api.client.get("/admin/usage", params={**RANGE, "tenant": "beta", "format": "csv"}, headers=ADMIN)
    assert r.headers["content-disposition"] == 'attachment; filename="usage-beta-2024-03-01-2024-03-03.csv"'
    assert error(api.client.get("/admin/usage", params={"tenant": "ghost"}, headers=ADMIN), 404)["code"] == (
        "tenant_not_found"
    )


def test_adapter_stats(api: Api) -> None:
    w = api.world
    rate(w.db, w.acme, w.ids["v1"][0], w.v1, "good")
    body = ok(api.client.get("/v1/adapters/support/stats", headers=api.keys["acme"]))
    assert (body["object"], body["adapter"]) == ("list", "support")
    assert [
        (d["version"], d["active"], d["canary"], d["requests"], d["errors"], d["judged"], d["share_good"])
        for d in body["data"]
    ] == [(1, True, False, 2, 0, 1, 1.0), (2, False, True, 2, 1, 0, None)]
    d2 = ok(api.client.get("/v1/adapters/support/stats", params={"since": "2024-03-02"}, headers=api.keys["acme"]))
    assert [d["requests"] for d in d2["data"]] == [0, 2]
    # Unknown and foreign names read the same.
    for name, key in (("nope", "acme"), ("support", "beta"), ("helper", "acme")):
        err = error(api.client.get(f"/v1/adapters/{name}/stats", headers=api.keys[key]), 404, "model")
        assert err["code"] == "model_not_found"
