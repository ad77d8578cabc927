"""The admin API calls the benchmarks set up with: tenants, keys, adapters registered by path.

Each takes anything with the gateway's `url` and `admin_key` (a throwaway `LocalTailor`, the
integration tests' server, or a running Tailor named on the command line) and fails with a
RuntimeError that quotes the gateway's answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx


class AdminAccess(Protocol):
    @property
    def url(self) -> str: ...

    @property
    def admin_key(self) -> str: ...


@dataclass(frozen=True)
class Gateway:
    """A running Tailor known by its URL and admin key."""

    url: str
    admin_key: str


def check(r: httpx.Response, what: str, expect: int = 201) -> dict[str, Any]:
    if r.status_code != expect:
        raise RuntimeError(f"{what} failed: HTTP {r.status_code} {r.text[:500]}")
    return r.json()


def admin_client(server: AdminAccess, timeout: float = 120) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.admin_key}"}, timeout=timeout)


def create_tenant_key(server: AdminAccess, tenant: str = "bench", key_name: str = "bench") -> str:
    """A new tenant and one API key of it."""
    with admin_client(server, timeout=60) as admin:
        check(admin.post("/admin/tenants", json={"name": tenant}), "creating tenant")
        return str(check(admin.post(f"/admin/tenants/{tenant}/keys", json={"name": key_name}), "creating key")["key"])


def register_adapter(admin: httpx.Client, tenant: str, name: str, path: Path) -> dict[str, Any]:
    """Register the adapter directory `path` (read by the gateway, so on its host) and activate it."""
    body = {"name": name, "path": str(path), "activate": True}
    return check(admin.post(f"/admin/tenants/{tenant}/adapters/register", json=body), f"registering {tenant}/{name}")


def served_models(url: str, key: str) -> list[str]:
    """The tenant's models as `GET /v1/models` lists them: the base model first."""
    r = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    return [str(m["id"]) for m in check(r, "GET /v1/models", expect=200)["data"]]
