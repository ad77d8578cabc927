"""Per-tenant LoRA adapters on the real engine: registration, hot-loading, isolation, residency."""

from __future__ import annotations

import concurrent.futures
import io
import sqlite3
import tarfile
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.conftest import BASE_MODEL, QUESTION, TAUGHT_ANSWER, TailorServer, TenantKeys
from tests.openai_schema import validate

pytestmark = pytest.mark.engine


def ask(c: openai.OpenAI, model: str, question: str = QUESTION) -> str:
    r = c.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=16
    )
    return r.choices[0].message.content or ""


def register_path(server: TailorServer, tenant: str, name: str, path: Path) -> dict:
    with server.admin() as admin:
        r = admin.post(f"/admin/tenants/{tenant}/adapters/register", json={"name": name, "path": str(path)})
        assert r.status_code == 201, r.text
        return r.json()


def tar_gz(directory: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(directory, arcname="adapter")
    return buf.getvalue()


def engine_stats(server: TailorServer) -> dict:
    with server.admin() as admin:
        return admin.get("/admin/engines").json()[0]


@pytest.fixture(scope="module")
def acme_support(tailor_server: TailorServer, tenant_a: TenantKeys, trained_adapter: Path) -> str:
    register_path(tailor_server, tenant_a.name, "support", trained_adapter)
    return "support"


@pytest.fixture(scope="module")
def globex_support(tailor_server: TailorServer, tenant_b: TenantKeys, random_adapter: Path) -> str:
    # Uploaded by the tenant itself, as an archive, under the same name acme uses.
    r = httpx.post(
        f"{tailor_server.url}/v1/adapters",
        headers={"Authorization": f"Bearer {tenant_b.key}"},
        data={"name": "support"},
        files={"file": ("support.tar.gz", tar_gz(random_adapter))},
        timeout=120,
    )
    assert r.status_code == 201, r.text
    assert r.json()["active_version"] == 1
    return "support"


def test_trained_adapter_answers_differently(
    tailor_server: TailorServer, tenant_a: TenantKeys, acme_support: str
) -> None:
    c = tailor_server.sdk(tenant_a)
    base = ask(c, BASE_MODEL)
    tuned = ask(c, acme_support)
    assert "Paris" in base
    assert "Zorblax" in tuned, tuned
    raw = c.chat.completions.with_raw_response.create(
        model=acme_support, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=16
    )
    body = raw.http_response.json()
    validate(body, "CreateChatCompletionResponse")
    assert body["model"] == "support"  # never the engine's internal adapter name
    assert TAUGHT_ANSWER.split()[0] in body["choices"][0]["message"]["content"]


def test_streaming_through_adapter(tailor_server: TailorServer, tenant_a: TenantKeys, acme_support: str) -> None:
    c = tailor_server.sdk(tenant_a)
    stream = c.chat.completions.create(
        model=acme_support,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    for ch in chunks:
        validate(ch.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
        assert ch.model == "support"
    assert "Zorblax" in "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)


def test_tenants_are_isolated(
    tailor_server: TailorServer, tenant_a: TenantKeys, tenant_b: TenantKeys, acme_support: str, globex_support: str
) -> None:
    a, b = tailor_server.sdk(tenant_a), tailor_server.sdk(tenant_b)
    # Same name, different adapters: each tenant gets its own.
    assert "Zorblax" in ask(a, "support")
    assert "Zorblax" not in ask(b, "support")
    # Each sees only its own adapters.
    a_models = {m.id for m in a.models.list().data}
    b_models = {m.id for m in b.models.list().data}
    assert {"support", BASE_MODEL} <= a_models and {"support", BASE_MODEL} <= b_models
    r = httpx.get(f"{tailor_server.url}/v1/adapters", headers={"Authorization": f"Bearer {tenant_b.key}"})
    assert [ad["versions"][0]["rank"] for ad in r.json()] == [4]  # globex's own rank-4 adapter only


def test_foreign_adapter_name_is_404(
    tailor_server: TailorServer, tenant_a: TenantKeys, tenant_b: TenantKeys, trained_adapter: Path
) -> None:
    register_path(tailor_server, tenant_a.name, "acme-private", trained_adapter)
    b = tailor_server.sdk(tenant_b)
    with pytest.raises(openai.NotFoundError) as info:
        ask(b, "acme-private")
    validate(info.value.response.json(), "ErrorResponse")
    assert "acme-private" not in {m.id for m in b.models.list().data}
    with pytest.raises(openai.NotFoundError):
        b.models.retrieve("acme-private")


def test_invalid_adapter_upload_is_refused(tailor_server: TailorServer, tenant_a: TenantKeys, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (bad / "adapter_model.bin").write_bytes(b"pickle!")
    r = httpx.post(
        f"{tailor_server.url}/v1/adapters",
        headers={"Authorization": f"Bearer {tenant_a.key}"},
        data={"name": "evil"},
        files={"file": ("a.tar.gz", tar_gz(bad))},
    )
    assert r.status_code == 400, r.text
    validate(r.json(), "ErrorResponse")
    r = httpx.post(
        f"{tailor_server.url}/v1/adapters",
        headers={"Authorization": f"Bearer {tenant_a.key}"},
        data={"name": "evil"},
        files={"file": ("a.tar.gz", b"not an archive")},
    )
    assert r.status_code == 400, r.text


def test_concurrent_first_requests_load_once(
    tailor_server: TailorServer, tenant_a: TenantKeys, trained_adapter: Path
) -> None:
    register_path(tailor_server, tenant_a.name, "burst", trained_adapter)
    before = engine_stats(tailor_server)["loads"]
    c = tailor_server.sdk(tenant_a)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: ask(c, "burst"), range(8)))
    assert all("Zorblax" in a for a in answers)
    assert engine_stats(tailor_server)["loads"] == before + 1


def test_lru_eviction_keeps_serving(tailor_server: TailorServer, tenant_a: TenantKeys, trained_adapter: Path) -> None:
    names = ["lru-1", "lru-2", "lru-3"]
    for n in names:
        register_path(tailor_server, tenant_a.name, n, trained_adapter)
    c = tailor_server.sdk(tenant_a)
    evictions = engine_stats(tailor_server)["evictions"]
    for n in names + names:
        assert "Zorblax" in ask(c, n)
    stats = engine_stats(tailor_server)
    assert stats["resident_adapters"] <= 2  # TAILOR_MAX_RESIDENT_ADAPTERS in the test server
    assert stats["evictions"] > evictions


def test_rollback_switches_versions(
    tailor_server: TailorServer, tenant_a: TenantKeys, trained_adapter: Path, random_adapter: Path
) -> None:
    register_path(tailor_server, tenant_a.name, "switch", trained_adapter)
    register_path(tailor_server, tenant_a.name, "switch", random_adapter)  # v2 becomes active
    c = tailor_server.sdk(tenant_a)
    time.sleep(0.6)  # the test server's lookup cache TTL
    assert "Zorblax" not in ask(c, "switch")
    r = httpx.post(
        f"{tailor_server.url}/v1/adapters/switch/activate",
        json={"version": 1},
        headers={"Authorization": f"Bearer {tenant_a.key}"},
    )
    assert r.status_code == 200 and r.json()["active_version"] == 1
    assert "Zorblax" in ask(c, "switch")


def test_every_request_is_logged(tailor_server: TailorServer, tenant_a: TenantKeys, acme_support: str) -> None:
    c = tailor_server.sdk(tenant_a)
    raw = c.chat.completions.with_raw_response.create(
        model=acme_support, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=16
    )
    interaction_id = raw.headers["x-tailor-interaction-id"]
    row = None
    for _ in range(50):
        with sqlite3.connect(tailor_server.data_dir / "tailor.db") as db:
            row = db.execute(
                "SELECT model, adapter_version_id, response_text, prompt_tokens, completion_tokens,"
                " status_code, request FROM interactions WHERE id = ?",
                (interaction_id,),
            ).fetchone()
        if row:
            break
        time.sleep(0.1)
    assert row is not None
    model, version_id, text, prompt_tokens, completion_tokens, status, request = row
    assert model == "support" and version_id and "Zorblax" in text
    assert prompt_tokens > 0 and completion_tokens > 0 and status == 200
    assert QUESTION in request


def test_client_disconnect_cancels_engine_request(tailor_server: TailorServer, tenant_a: TenantKeys) -> None:
    body = {
        "model": BASE_MODEL,
        "messages": [{"role": "user", "content": "Count from 1 to 1000."}],
        "max_tokens": 1500,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    with tailor_server.stream(tenant_a, "/v1/chat/completions", body, timeout=60) as r:
        interaction_id = r.headers["x-tailor-interaction-id"]
        for i, _line in enumerate(r.iter_lines()):
            if i > 6:
                break
    # 1500 tokens take well over 10 s here; a cancelled request frees the engine at once.
    deadline = time.monotonic() + 8
    running = None
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{tailor_server.engine_url}/metrics").text
        running = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("vllm:num_requests_running")
        )
        if running == 0:
            break
        time.sleep(0.2)
    assert running == 0
    for _ in range(50):
        with sqlite3.connect(tailor_server.data_dir / "tailor.db") as db:
            row = db.execute("SELECT status_code FROM interactions WHERE id = ?", (interaction_id,)).fetchone()
        if row:
            break
        time.sleep(0.1)
    assert row == (499,)
