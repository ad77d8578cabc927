"""Promotion and rollback under traffic: requests keep flowing, none fails."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.conftest import QUESTION, TailorServer, TenantKeys

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

    stop = threading.Event()
    failures: list[str] = []
    answers: list[str] = []
    lock = threading.Lock()

    def plain() -> None:
        c = openai.OpenAI(base_url=f"{tailor_server.url}/v1", api_key=tenant_a.key, max_retries=0, timeout=60)
        while not stop.is_set():
            try:
                r = c.chat.completions.create(
                    model="live", messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=12
                )
                with lock:
                    answers.append(r.choices[0].message.content or "")
            except Exception as exc:  # noqa: BLE001 - any failure is what the test counts
                with lock:
                    failures.append(repr(exc))

    def streaming() -> None:
        c = openai.OpenAI(base_url=f"{tailor_server.url}/v1", api_key=tenant_a.key, max_retries=0, timeout=60)
        while not stop.is_set():
            try:
                chunks = list(
                    c.chat.completions.create(
                        model="live",
                        messages=[{"role": "user", "content": QUESTION}],
                        temperature=0,
                        max_tokens=12,
                        stream=True,
                    )
                )
                text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
                assert chunks[-1].choices[0].finish_reason in ("stop", "length")
                with lock:
                    answers.append(text)
            except Exception as exc:  # noqa: BLE001
                with lock:
                    failures.append(repr(exc))

    workers = [threading.Thread(target=f) for f in (plain, plain, streaming, streaming)]
    for w in workers:
        w.start()
    try:
        for version in (2, 1, 2):
            time.sleep(3)
            r = httpx.post(f"{tailor_server.url}/v1/adapters/live/activate", headers=auth, json={"version": version})
            assert r.status_code == 200, r.text
        time.sleep(3)
        r = httpx.post(f"{tailor_server.url}/v1/adapters/live/rollback", headers=auth)
        assert r.status_code == 200 and r.json()["active_version"] == 1, r.text
        time.sleep(3)
    finally:
        stop.set()
        for w in workers:
            w.join(60)
    assert failures == []
    assert len(answers) >= 20
    # Both versions actually served during the run.
    assert any("Zorblax" in a for a in answers) and any("Zorblax" not in a for a in answers)
