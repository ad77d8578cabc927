"""Promotion and rollback under traffic: requests keep flowing, none fails."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import TailorServer, TenantKeys
from tests.integration.traffic import traffic

pytestmark = pytest.mark.engine


def test_promote_and_rollback_under_load_fail_nothing(
    tailor_server: TailorServer, tenant_a: TenantKeys, trained_adapter: Path, random_adapter: Path
) -> None:
    with tailor_server.admin() as admin:
        for path in (trained_adapter, random_adapter):
            r = admin.post(
                "/admin/tenants/acme/adapters/register", json={"name": "live", "path": str(path), "activate": False}
            )
            assert r.status_code == 201, r.text
    auth = {"Authorization": f"Bearer {tenant_a.key}"}
    r = httpx.post(f"{tailor_server.url}/v1/adapters/live/activate", headers=auth, json={"version": 1})
    assert r.status_code == 200

    with traffic(tailor_server, tenant_a, "live", (False, False, True, True), 60, temperature=0, max_tokens=12) as seen:
        for version in (2, 1, 2):
            time.sleep(3)
            r = httpx.post(f"{tailor_server.url}/v1/adapters/live/activate", headers=auth, json={"version": version})
            assert r.status_code == 200, r.text
        time.sleep(3)
        r = httpx.post(f"{tailor_server.url}/v1/adapters/live/rollback", headers=auth)
        assert r.status_code == 200 and r.json()["active_version"] == 1, r.text
        time.sleep(3)
    assert seen.failures == []
    assert len(seen.answers) >= 20
    # Both versions actually served during the run.
    assert any("Zorblax" in a for a in seen.answers) and any("Zorblax" not in a for a in seen.answers)
