"""A full-model version on an engine of its own, through the live gateway and the official SDK.

A 4-layer model derived from the offline one (adapters.derived_model) is uploaded as version 2
of a tenant's adapter name. Its first request starts a vLLM child for it (503 with Retry-After
until it is up, which the SDK waits out by itself); it answers chat and text completions,
plain and streamed, schema-valid; it stops after TAILOR_DEDICATED_IDLE_S without traffic and
comes back on the next request; and the name's alias moves between the adapter version and
the full model under client traffic without a failed request.

The gateway here uses the session's evaluation engine as its base engine (TAILOR_ENGINE_URLS),
so this file runs two vLLM servers at once: that one and the dedicated child.
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from adapters.derived_model import derive_model
from tests.conftest import LiveEngine
from tests.integration.conftest import (
    MODEL_DIR,
    ONE_DEDICATED_ENGINE,
    TailorServer,
    TenantKeys,
    make_tenant,
    running_tailor,
)
from tests.integration.traffic import MESSAGES, first_answer, traffic
from tests.openai_schema import validate

pytestmark = pytest.mark.engine

IDLE_S = 10


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (MODEL_DIR / "config.json").exists():
        pytest.skip(f"base model not prepared at {MODEL_DIR} (run `make install`)")
    return derive_model(MODEL_DIR, tmp_path_factory.mktemp("models") / "SmolLM2-4L", "spread:4").out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, eval_engine: LiveEngine) -> Iterator[TailorServer]:
    with running_tailor(
        tmp_path_factory.mktemp("tailor-dedicated"),
        eval_engine,
        serve_on_eval_engine=True,
        **ONE_DEDICATED_ENGINE,
        TAILOR_DEDICATED_IDLE_S=str(IDLE_S),
        TAILOR_RUN_TRAINER="false",
    ) as running:
        yield running
    assert _engine_pids() == [], "a dedicated engine outlived the gateway"


@pytest.fixture(scope="module")
def tenant(server: TailorServer) -> TenantKeys:
    return make_tenant(server, "dedicated-acme")


def _engine_pids(digest: str = "") -> list[int]:
    """vLLM servers started for full models (served under their digest), from /proc."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"vllm.entrypoints.openai.api_server" in cmdline and b"--served-model-name" in cmdline:
            served = cmdline[cmdline.index(b"--served-model-name") + 1].decode()
            if len(served) == 64 and served.startswith(digest) and b"--enable-lora" not in cmdline:
                pids.append(int(proc.name))
    return pids


def _tar_gz(model: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tf:
        tf.add(model, arcname=model.name)
    return buffer.getvalue()


def _ready_engines(server: TailorServer) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith('tailor_dedicated_engines{state="ready"}'):
            return float(line.split()[-1])
    raise AssertionError("no tailor_dedicated_engines metric")


def test_a_full_model_serves_scales_to_zero_and_switches_with_an_adapter(
    server: TailorServer, tenant: TenantKeys, small_model: Path, random_adapter: Path
) -> None:
    auth = {"Authorization": f"Bearer {tenant.key}"}
    with server.admin() as admin:
        body = {"name": "support", "path": str(random_adapter), "activate": True}
        assert admin.post(f"/admin/tenants/{tenant.name}/adapters/register", json=body).status_code == 201
    # The model goes in like an adapter: uploaded to the tenant's own route, as the next version.
    r = httpx.post(
        f"{server.url}/v1/adapters",
        headers=auth,
        data={"name": "support"},
        files={"file": ("student.tar.gz", _tar_gz(small_model))},
        timeout=300,
    )
    assert r.status_code == 201, r.text
    versions = {v["version"]: v for v in r.json()["versions"]}
    assert versions[1]["kind"] == "adapter" and versions[2]["kind"] == "model"
    assert r.json()["active_version"] == 2
    digest = versions[2]["digest"]

    # First use: the engine starts; a client that does not wait is told when to come back.
    started = time.monotonic()
    cold = httpx.post(
        f"{server.url}/v1/chat/completions",
        headers=auth,
        json={"model": "support", "messages": MESSAGES, "max_tokens": 8},
        timeout=60,
    )
    assert cold.status_code == 503, cold.text
    validate(cold.json(), "ErrorResponse")
    assert cold.json()["error"]["code"] == "model_starting" and int(cold.headers["retry-after"]) >= 1
    assert digest not in cold.text

    # The SDK waits the start out (it honours Retry-After on a 503).
    sdk = server.sdk(tenant, retries=10)
    answer = first_answer(sdk, "support", max_tokens=8)
    validate(answer.json(), "CreateChatCompletionResponse")
    assert answer.json()["model"] == "support" and digest not in answer.text
    print(f"cold start answered after {time.monotonic() - started:.1f} s")
    assert len(_engine_pids(digest)) == 1 and _ready_engines(server) == 1

    warm = server.sdk(tenant)
    chunks = list(warm.chat.completions.create(model="support@v2", messages=MESSAGES, max_tokens=8, stream=True))
    for chunk in chunks:
        validate(chunk.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    text = warm.completions.with_raw_response.create(model="support", prompt="Paris is", max_tokens=6)
    validate(text.http_response.json(), "CreateCompletionResponse")

    # Another tenant reaches neither the name nor the pinned full model.
    other = server.sdk(make_tenant(server, "dedicated-globex"))
    for name in ("support", "support@v2"):
        with pytest.raises(openai.NotFoundError):
            other.chat.completions.create(model=name, messages=MESSAGES, max_tokens=4)

    # Scale to zero, and back on the next request.
    deadline = time.monotonic() + IDLE_S + 30
    while _engine_pids(digest) and time.monotonic() < deadline:
        time.sleep(1)
    assert _engine_pids(digest) == [] and _ready_engines(server) == 0
    again = first_answer(sdk, "support", max_tokens=8)
    assert again.json()["choices"][0]["message"]["content"] is not None and len(_engine_pids(digest)) == 1

    _switch_under_traffic(server, tenant, auth)


def _switch_under_traffic(server: TailorServer, tenant: TenantKeys, auth: dict[str, str]) -> None:
    """Move `support` between the adapter (v1) and the full model (v2) while clients call it."""
    with traffic(server, tenant, "support", (False, False, True), 120, max_tokens=8) as seen:
        for _ in range(3):
            time.sleep(2)
            r = httpx.post(f"{server.url}/v1/adapters/support/rollback", headers=auth)
            assert r.status_code == 200 and r.json()["active_version"] == 1, r.text
            time.sleep(2)
            r = httpx.post(f"{server.url}/v1/adapters/support/activate", headers=auth, json={"version": 2})
            assert r.status_code == 200 and r.json()["active_version"] == 2, r.text
        time.sleep(2)
    assert seen.failures == []
    assert len(seen.answers) >= 12
    lineage = httpx.get(f"{server.url}/v1/adapters/support/lineage", headers=auth).json()
    assert {v["version"]: v["kind"] for v in lineage} == {1: "adapter", 2: "model"}
