"""The child engine dies: clean errors meanwhile, automatic restart, adapters re-loaded."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.conftest import BASE_MODEL, QUESTION, TailorServer, TenantKeys
from tests.openai_schema import validate

pytestmark = [pytest.mark.engine, pytest.mark.disruptive]


def engine_process(server: TailorServer) -> psutil.Process:
    for child in psutil.Process(server.process.pid).children(recursive=True):
        if "vllm.entrypoints.openai.api_server" in " ".join(child.cmdline()):
            return child
    raise AssertionError("no child engine found")


def chat(server: TailorServer, key: str, model: str, **extra: object) -> httpx.Response:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0,
        "max_tokens": 16,
        **extra,
    }
    return httpx.post(
        f"{server.url}/v1/chat/completions", json=body, timeout=60, headers={"Authorization": f"Bearer {key}"}
    )


def test_engine_crash_mid_stream_then_recovery(
    tailor_server: TailorServer, tenant_a: TenantKeys, trained_adapter: Path
) -> None:
    with tailor_server.admin() as admin:
        r = admin.post(
            f"/admin/tenants/{tenant_a.name}/adapters/register", json={"name": "phoenix", "path": str(trained_adapter)}
        )
        assert r.status_code == 201, r.text
    assert "Zorblax" in chat(tailor_server, tenant_a.key, "phoenix").json()["choices"][0]["message"]["content"]
    victim = engine_process(tailor_server)

    events: list[str] = []
    started = threading.Event()

    def long_stream() -> None:
        body = {
            "model": BASE_MODEL,
            "messages": [{"role": "user", "content": "Count to 1000."}],
            "max_tokens": 1500,
            "ignore_eos": True,
            "stream": True,
        }
        with tailor_server.stream(tenant_a, "/v1/chat/completions", body) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    started.set()

    reader = threading.Thread(target=long_stream)
    reader.start()
    assert started.wait(60)
    victim.kill()
    reader.join(60)
    assert not reader.is_alive()
    # The stream ends with an OpenAI error event, not a silently truncated answer.
    last = json.loads(events[-1])
    validate(last, "ErrorResponse")

    # While the engine restarts, requests fail fast with a clean 503.
    saw_503 = False
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        r = chat(tailor_server, tenant_a.key, "phoenix")
        if r.status_code == 200:
            break
        assert r.status_code == 503, r.text
        validate(r.json(), "ErrorResponse")
        saw_503 = True
        time.sleep(1)
    assert saw_503
    assert r.status_code == 200, "engine did not come back within 240 s"
    # The adapter that was resident before the crash is served again.
    assert "Zorblax" in r.json()["choices"][0]["message"]["content"]
    assert engine_process(tailor_server).pid != victim.pid
