"""The real child engine is Tailor's alone: only Tailor's key opens it, and /ready shows it."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import BASE_MODEL, QUESTION, TailorServer, TenantKeys
from tests.integration.test_engine_restart import engine_process

pytestmark = pytest.mark.engine


def test_child_engine_refuses_everyone_but_tailor(tailor_server: TailorServer, tenant_a: TenantKeys) -> None:
    ready = httpx.get(f"{tailor_server.url}/ready", timeout=10)
    assert ready.status_code == 200, ready.text
    [status] = ready.json()["engine_status"]
    assert status["healthy"] and status["problem"] is None
    engine_url = status["url"]

    # vLLM's /health has no key: it answers anyone, which is why it proves nothing.
    assert httpx.get(f"{engine_url}/health", timeout=10).status_code == 200
    chat = {"model": BASE_MODEL, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4}
    for headers in (
        {},
        {"Authorization": "Bearer not-the-key"},
        {"Authorization": f"Bearer {tailor_server.admin_key}"},
        {"Authorization": f"Bearer {tenant_a.key}"},
    ):
        assert httpx.get(f"{engine_url}/v1/models", headers=headers, timeout=10).status_code == 401
        assert (
            httpx.post(f"{engine_url}/v1/chat/completions", json=chat, headers=headers, timeout=30).status_code == 401
        )
    # The key is nowhere on the engine's command line.
    assert "--api-key" not in engine_process(tailor_server).cmdline()

    # The gateway holds the key: the same request through it is served.
    r = httpx.post(
        f"{tailor_server.url}/v1/chat/completions",
        json=chat,
        headers={"Authorization": f"Bearer {tenant_a.key}"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
