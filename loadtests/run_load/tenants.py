"""Tenants, keys and adapters for the load through the admin API, and the warm-up before it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadtests.admin_api import check, register_adapter, served_models
from loadtests.launcher import progress
from loadtests.lora_adapters import AdapterSpec, adapter_spec

# Names given to the adapters of every tenant, most popular first (then adapter-<i>).
ADAPTER_NAMES = ("support", "billing", "legal", "sales", "triage", "summarize", "translate", "search")


@dataclass
class TenantSetup:
    tenant: str
    key: str
    models: list[str]  # popularity order, as the locustfile draws them
    base_model: str


def setup_tenants(
    admin: httpx.Client,
    *,
    tenants: int,
    adapters_per_tenant: int,
    paths: dict[AdapterSpec, Path],
    url: str,
    run_tag: str,
    promote_second: Path | None,
) -> list[TenantSetup]:
    out = []
    index = 0
    base_model = ""
    for t in range(tenants):
        name = f"load-{run_tag}-{t}"
        check(admin.post("/admin/tenants", json={"name": name}), f"creating tenant {name}")
        key = check(admin.post(f"/admin/tenants/{name}/keys", json={"name": "locust"}), f"key for {name}")["key"]
        if not base_model:  # the base model's public name: /v1/models lists it first
            base_model = served_models(url, key)[0]
        adapters = []
        for a in range(adapters_per_tenant):
            adapter = ADAPTER_NAMES[a] if a < len(ADAPTER_NAMES) else f"adapter-{a}"
            register_adapter(admin, name, adapter, paths[adapter_spec(index)])
            index += 1
            adapters.append(adapter)
        if promote_second is not None and t == 0 and adapters:
            info = register_adapter(admin, name, adapters[0], promote_second)
            progress(f"{name}/{adapters[0]}: versions {[v['version'] for v in info['versions']]}")
        # Popularity: the tenant's main adapter, then the base model, then the long tail.
        models = [*adapters[:1], base_model, *adapters[1:]]
        out.append(TenantSetup(tenant=name, key=key, models=models, base_model=base_model))
    progress(f"setup: {tenants} tenants, {adapters_per_tenant} adapters each")
    return out


def warm_up(url: str, tenants: Sequence[TenantSetup], timeout_s: float = 300.0) -> None:
    """One 1-token request per (tenant, model): first adapter loads happen here, not in the run."""
    started = time.monotonic()
    with httpx.Client(base_url=url, timeout=timeout_s) as client:
        for t in tenants:
            for model in t.models:
                r = client.post(
                    "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {t.key}"},
                    json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
                )
                if r.status_code != 200:
                    raise RuntimeError(f"warm-up {t.tenant}/{model}: HTTP {r.status_code} {r.text[:300]}")
    progress(f"warm-up: {sum(len(t.models) for t in tenants)} requests in {time.monotonic() - started:.0f} s")
