"""Fuzz every route of Tailor with schemathesis, against Tailor's own OpenAPI document (`app.openapi()`).

What is fuzzed: every operation of the document, one pytest item per operation (named
`test_fuzz[METHOD /path]`; pick some with `-k`, e.g. `-k "policy and PUT"`), through schemathesis's
explicit-examples, coverage (boundary and invalid values, unexpected methods) and fuzzing phases, with
valid and invalid data. Requests go in-process, over schemathesis's ASGI transport, to the real app
(`tests/apputil.make_app`: SQLite in a temp dir, admin key "adm", no trainer process, an engine URL
nothing answers). /admin routes carry "Bearer adm", every other route tenant "acme"'s key.

Checks on every response:
- `not_a_server_error`, except two 503s Tailor answers by design: the completion routes' OpenAI-shaped
  `engine_unavailable` error (no engine runs here, and an unreachable engine is a 503 on purpose), and
  /ready's documented "unavailable" while no engine is healthy;
- `response_schema_conformance`, `content_type_conformance`, `response_headers_conformance`;
- every 4xx/5xx body is OpenAI's `ErrorResponse` (`tests/openai_schema.py`).
`status_code_conformance` is not run: the document lists only 200/201 and FastAPI's 422 (which Tailor
never sends: it answers validation errors with 400), not Tailor's 400/401/404/409/413/429 refusals.
An unhandled exception raises out of the ASGI call rather than becoming a response, so it fails the item.

So that generated requests reach handlers, not only 404s, the world holds real objects (tenants, keys, an
adapter with two versions, a file, a job, an interaction, a batch) and two hooks mix their ids into generated path
parameters and body fields. Operations that destroy run after all others, in later tests: those that
delete data, then key revoke/rotate, then tenant deletion. Admin routes aim at tenant "beta", so that
limits, policy or a purge set by the fuzzer never throttle or empty "acme", the tenant /v1 routes use.

Reproducible: a fixed seed (schemathesis derives one per operation), derandomized, no example database;
`MAX_EXAMPLES` bounds each operation's fuzzing phase (both overridable, see below). Run alone, in about a
minute: `.venv/bin/python -m pytest tests/fuzz/test_fuzz_openapi.py`.

Bugs the fuzzing led to (all fixed) have minimal reproductions in `test_found_by_fuzzing`.

The document is built at import, from a throwaway app: pytest collects one item per operation.
`schemathesis.pytest.from_fixture` would avoid that, but it fails on pytest 9 (it sets `Node._nodeid`,
which pytest 9 removed); the app under test must serve the same document (checked by the fixture).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, HookContext, Response
from schemathesis.checks import not_a_server_error
from schemathesis.filters import HasAPIOperation
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
)

from core.ids import new_id, utcnow
from gateway.responses import store as response_store
from gateway.responses.items import input_items
from tests.adapters.test_validation import tiny_config, write_adapter
from tests.apputil import ADMIN, TenantsApi, make_app, serve_tenants
from tests.dbutil import add_interaction
from tests.openai_schema import validate

# Deeper or other runs: TAILOR_FUZZ_SEED=7 TAILOR_FUZZ_MAX_EXAMPLES=500 .venv/bin/python -m pytest tests/fuzz
SEED = int(os.environ.get("TAILOR_FUZZ_SEED", "20240611"))
MAX_EXAMPLES = int(os.environ.get("TAILOR_FUZZ_MAX_EXAMPLES", "50"))

CONFIG = schemathesis.Config.from_dict(
    {"seed": SEED, "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"}}
)

# Feedback imports also take a raw JSON Lines body. Schemathesis has no serializer for that media type;
# the document says the body is a string, which goes on the wire as text.
schemathesis.serializer.alias("application/jsonl", "text/plain")

TENANTS = ("acme", "beta")  # the caller of /v1 routes; the {tenant} of /admin routes
CHAT = {"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]}
BIG = 2**63  # one past the largest SQLite integer


def _app(directory: Path) -> FastAPI:
    """The app under test: adapters validate against a tiny base model config; no trainer process."""
    base = directory / "tiny-llama"
    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps(tiny_config()))
    return make_app(directory / "data", base_model_path=base)


def _openapi_document() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tailor-openapi-") as tmp:
        return _app(Path(tmp)).openapi()


DOCUMENT = _openapi_document()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


# --- the world the fuzzer aims at ---------------------------------------------------------------


@dataclass
class World:
    app: FastAPI
    tenant_key: dict[str, str]

    def auth(self, path: str) -> dict[str, str]:
        return ADMIN if path.startswith("/admin") else self.tenant_key


# Generated path parameters and body fields of these names are sometimes replaced by one of the values.
# Filled by the `world` fixture, read by the generation hooks.
KNOWN: dict[str, list[str]] = {}


def _ok(r: Any, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("fuzz")
    app = _app(tmp)
    adapter = write_adapter(tmp / "lora")
    base_model = app.state.services.settings.base_model_name
    # Entering the client starts the app's lifespan on schemathesis's event loop, where every fuzzed
    # request runs too; it lasts until shutdown_lifespans().
    # (cast: schemathesis types ASGI scopes as dict, Starlette as MutableMapping)
    with asgi.get_client(cast(Any, app)) as client:
        assert _ok(client.get("/openapi.json")) == DOCUMENT
        ids = [_ok(client.post("/admin/tenants", json={"name": n}, headers=ADMIN), 201)["id"] for n in TENANTS]
        keys = [_ok(client.post(f"/admin/tenants/{n}/keys", json={}, headers=ADMIN), 201) for n in TENANTS]
        acme = {"authorization": f"Bearer {keys[0]['key']}"}
        for name in TENANTS:
            for activate in (True, False):  # versions 1 (active) and 2
                body = {"name": "support", "path": str(adapter), "activate": activate}
                _ok(client.post(f"/admin/tenants/{name}/adapters/register", json=body, headers=ADMIN), 201)
        upload = {"file": ("train.jsonl", (json.dumps(CHAT) + "\n").encode() * 2)}
        file_id = _ok(client.post("/v1/files", files=upload, data={"purpose": "fine-tune"}, headers=acme))["id"]
        job = {"model": base_model, "training_file": file_id}
        job_id = _ok(client.post("/v1/fine_tuning/jobs", json=job, headers=acme))["id"]
        request = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "support"}}
        upload = {"file": ("batch.jsonl", json.dumps(request).encode())}
        batch_file = _ok(client.post("/v1/files", files=upload, data={"purpose": "batch"}, headers=acme))["id"]
        batch = {"input_file_id": batch_file, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        batch_id = _ok(client.post("/v1/batches", json=batch, headers=acme))["id"]
    interaction_id = add_interaction(
        app.state.services.db, ids[0], model="support", request=CHAT, response_text="Paris."
    )
    completion_id = add_interaction(
        app.state.services.db,
        ids[0],
        model="support",
        request={"messages": CHAT["messages"][:1]},
        response_text="Paris.",
        finish_reason="stop",
        stored=True,
        stored_metadata={"task": "geo"},
    )
    response_id = new_id("resp", "_")
    response_store.save(
        app.state.services.db,
        ids[0],
        response_store.Turn(response_id, "support", utcnow(), None, input_items(CHAT["messages"][0]["content"]), {}),
    )
    KNOWN.update(
        tenant=[TENANTS[1], ids[1]],
        name=["support"],
        model=["support", "support@v2", base_model],
        version=["1", "2"],
        file_id=[file_id, batch_file],
        input_file_id=[batch_file],
        batch_id=[batch_id],
        endpoint=["/v1/chat/completions"],
        completion_window=["24h"],
        training_file=[file_id],
        validation_file=[file_id],
        fine_tuning_job_id=[job_id],
        interaction_id=[interaction_id],
        completion_id=[completion_id],
        response_id=[response_id],
        key_id=[keys[1]["id"]],
    )
    try:
        yield World(app, acme)
    finally:
        KNOWN.clear()
        asgi.shutdown_lifespans()


def _typed(known: Sequence[str], like: Any) -> list[Any]:
    """The known values in the generated value's type (an integer `version` stays an integer)."""
    if isinstance(like, int) and not isinstance(like, bool):
        return [int(k) for k in known if k.isdigit()]
    return list(known)


def _aim(values: Mapping[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """`values` as generated, or with entries of known names replaced by a known value."""
    picks = {k: st.sampled_from([v, *_typed(KNOWN[k], v)]) for k, v in values.items() if k in KNOWN}
    if not picks:
        return st.just(dict(values))
    return st.fixed_dictionaries(picks).map(lambda picked: {**values, **picked})


@schema.hook
def flatmap_path_parameters(context: HookContext, path_parameters: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    return _aim(path_parameters) if isinstance(path_parameters, dict) else st.just(path_parameters)


@schema.hook
def flatmap_body(context: HookContext, body: Any) -> st.SearchStrategy[Any]:
    return _aim(body) if isinstance(body, dict) else st.just(body)


# --- checks -----------------------------------------------------------------------------------

_COMPLETIONS = re.compile(r"/v1/((chat/)?completions|responses)")


def _json(response: Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def not_a_server_error_but_by_design(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """`not_a_server_error`, but for the two 503s Tailor answers by design (see the module docstring)."""
    body = _json(response)
    if response.status_code == 503 and isinstance(body, dict):
        path = case.operation.path
        if _COMPLETIONS.fullmatch(path) and body.get("error", {}).get("code") == "engine_unavailable":
            return True
        if path == "/ready" and body.get("status") == "unavailable":
            return True
    return not_a_server_error(ctx, response, case)


def openai_error_body(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """Every refusal and failure carries OpenAI's error body (the document describes none of them)."""
    if response.status_code < 400 or (case.operation.path == "/ready" and response.status_code == 503):
        return None
    body = _json(response)
    assert body is not None, f"the {response.status_code} body is not JSON: {response.text[:200]!r}"
    validate(body, "ErrorResponse")
    return True


CHECKS = [
    not_a_server_error_but_by_design,
    response_schema_conformance,
    content_type_conformance,
    response_headers_conformance,
    openai_error_body,
]


# --- bugs found: minimal reproductions ------------------------------------------------------------

# (method, url, JSON body or raw bytes, expected status)
REPRODUCTIONS = [
    # gateway/routes/usage.py (fixed): a lone `until` near 0001-01-01 underflowed the default window, and
    # `until` 9999-12-31 overflowed the range's end (the day after), both an OverflowError, a 500.
    pytest.param("GET", "/v1/usage?until=0001-01-01", None, 200, id="usage-until-first-day"),
    pytest.param("GET", "/admin/usage?until=0001-01-05", None, 200, id="admin-usage-until-first-days"),
    pytest.param("GET", "/v1/usage?since=9999-12-30&until=9999-12-31", None, 400, id="usage-until-last-day"),
    pytest.param("GET", "/v1/adapters/support/stats?until=9999-12-31", None, 400, id="stats-until-last-day"),
    # gateway/routes/policy.py and trainer/policy.py (fixed): unbounded retrain_min_feedback overflowed the
    # 64-bit integer (a 500), an infinite or huge retrain_interval_hours was stored and overflowed the
    # scheduler's datetime arithmetic; gateway/routes/audit.py (fixed): unbounded event-id cursors.
    pytest.param(
        "PUT",
        "/v1/policy",
        {"retrain_min_feedback": BIG},
        400,
        id="policy-min-feedback-huge",
    ),
    pytest.param(
        "PUT",
        "/admin/tenants/acme/policy",
        {"retrain_min_feedback": BIG},
        400,
        id="admin-policy-min-feedback-huge",
    ),
    pytest.param(
        "PUT",
        "/v1/policy",
        b'{"retrain_interval_hours": Infinity}',
        400,
        id="policy-interval-infinite",
    ),
    pytest.param(
        "PUT",
        "/v1/policy",
        {"retrain_interval_hours": 1e300},
        400,
        id="policy-interval-huge",
    ),
    pytest.param("GET", f"/v1/audit?before={BIG}", None, 400, id="audit-before-huge"),
    pytest.param(
        "GET",
        f"/admin/audit?after={-BIG - 1}",
        None,
        400,
        id="admin-audit-after-huge",
    ),
]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TenantsApi]:
    """An app of its own (a TestClient's), so that what these requests store never meets the fuzzer."""
    with serve_tenants(_app(tmp_path_factory.mktemp("reproductions")), TenantsApi, names=("acme",)) as api:
        yield api


@pytest.mark.parametrize(("method", "url", "body", "status"), REPRODUCTIONS)
def test_found_by_fuzzing(api: TenantsApi, method: str, url: str, body: object, status: int) -> None:
    headers = ADMIN if url.startswith("/admin") else api.keys["acme"]
    if isinstance(body, bytes):  # JSON that only Python's parser takes (Infinity)
        r = api.client.request(method, url, content=body, headers={**headers, "content-type": "application/json"})
    else:
        r = api.client.request(method, url, json=body, headers=headers)
    assert r.status_code == status, r.text
    if status >= 400:
        validate(r.json(), "ErrorResponse")


def test_an_unhandled_error_is_an_openai_shaped_500(tmp_path: Path) -> None:
    """What the fuzzer cannot see in-process: a server error's body, as a client gets it."""
    app = make_app(tmp_path)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("boom")

    r = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert r.status_code == 500
    validate(r.json(), "ErrorResponse")
    assert r.json()["error"]["code"] == "internal_error"


# --- the fuzz tests: everything, then what deletes data, then keys, then tenants ---------------------


def _revokes_keys(ctx: HasAPIOperation) -> bool:
    return ctx.operation.path.startswith("/admin/keys/")


def _deletes_tenants(ctx: HasAPIOperation) -> bool:
    return ctx.operation.method == "delete" and ctx.operation.path == "/admin/tenants/{tenant}"


def _deletes_data(ctx: HasAPIOperation) -> bool:
    op = ctx.operation
    destroys = op.method == "delete" or op.path.endswith("/purge")
    return destroys and not _revokes_keys(ctx) and not _deletes_tenants(ctx)


def _fuzz(case: Case[Any], world: World) -> None:
    case.call_and_validate(headers=world.auth(case.operation.path), checks=CHECKS, app=world.app)


@schema.exclude(_deletes_data).exclude(_revokes_keys).exclude(_deletes_tenants).parametrize()
def test_fuzz(case: Case[Any], world: World) -> None:
    _fuzz(case, world)


@schema.include(_deletes_data).parametrize()
def test_fuzz_deleting_data(case: Case[Any], world: World) -> None:
    _fuzz(case, world)


@schema.include(_revokes_keys).parametrize()
def test_fuzz_revoking_keys(case: Case[Any], world: World) -> None:
    _fuzz(case, world)


@schema.include(_deletes_tenants).parametrize()
def test_fuzz_deleting_tenants(case: Case[Any], world: World) -> None:
    _fuzz(case, world)
