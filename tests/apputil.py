"""The real gateway app for API tests (no engine): `make_app`, tenants with keys, and
OpenAI-shaped response checks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient

from core.config import Settings
from core.db import Database
from gateway.app import create_app
from tests.openai_schema import validate

ADMIN = {"authorization": "Bearer adm"}


def make_app(tmp_path: Path, **settings: Any) -> FastAPI:
    """The gateway app on data in `tmp_path`, admin key "adm", an engine URL nothing answers, no
    trainer worker and no batch runner (else they claim the jobs and batches a test creates and
    reads back); `settings` add to or override those."""
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "engine_urls": ["http://127.0.0.1:9"],
        "admin_key": "adm",
        "run_trainer": False,
        "run_batches": False,
    }
    values.update(settings)
    return create_app(Settings(**values), wait_for_engines=False)


def create_tenant(client: TestClient, name: str) -> str:
    """Create tenant `name` through the admin API; returns its id."""
    r = client.post("/admin/tenants", json={"name": name}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def tenant_key(client: TestClient, name: str) -> dict[str, str]:
    """A new API key of tenant `name`, as an authorization header."""
    r = client.post(f"/admin/tenants/{name}/keys", json={}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return {"authorization": f"Bearer {r.json()['key']}"}


@dataclass
class TenantsApi:
    """A running app and its tenants; subclass it to add helpers."""

    app: FastAPI
    client: TestClient
    keys: dict[str, dict[str, str]]  # tenant name -> auth header
    ids: dict[str, str]  # tenant name -> tenant id

    @property
    def db(self) -> Database:
        return self.app.state.services.db  # type: ignore[no-any-return]


ApiT = TypeVar("ApiT", bound=TenantsApi)


@contextmanager
def serve_tenants(app: FastAPI, cls: type[ApiT], names: tuple[str, ...] = ("acme", "beta")) -> Iterator[ApiT]:
    """Start `app` under a TestClient and create tenants `names`, each with one key."""
    with TestClient(app) as client:
        ids = {name: create_tenant(client, name) for name in names}
        keys = {name: tenant_key(client, name) for name in ids}
        yield cls(app, client, keys, ids)


def ok(r: httpx.Response) -> Any:
    assert r.status_code == 200, r.text
    return r.json()


def error(r: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    """The `error` object of an OpenAI-shaped error response with `status` (and `param`)."""
    assert r.status_code == status, r.text
    body = r.json()
    validate(body, "ErrorResponse")
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]  # type: ignore[no-any-return]
