"""The serving hot path (gateway/proxy/) against a fake vLLM (see test_proxy.py): requests
for a tenant's adapters, their versions and checkpoints, loaded, reloaded and unloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from adapters import checkpoints
from core.quotas import Quotas
from tests.gateway.gateway_world import (
    ADMIN,
    BASE,
    CHAT,
    Gateway,
    answer_with,
    chunks,
    error_of,
    raw_json,
    running_gateway,
    serial,
    tenant_view,
    write_tiny_adapter,
)
from tests.gateway.module_gateway import module_gateway
from tests.openai_schema import validate
from trainer import job_records, jobs

pytestmark = pytest.mark.asyncio(loop_scope="module")


shared = module_gateway("gateway")


# --------------------------------------------------------------------------- adapters


async def test_adapter_request_loads_it_once_and_hides_its_engine_name(gw: Gateway) -> None:
    version_id = gw.register_adapter("helper")
    r = await gw.chat(model="helper")
    assert r.status_code == 200, r.text
    body = r.json()
    validate(body, "CreateChatCompletionResponse")
    assert body["model"] == "helper"
    assert version_id not in r.text

    r = await gw.chat(model="helper", stream=True, stream_options={"include_usage": True})
    got = chunks(r)
    assert all(c["model"] == "helper" for c in got)
    assert version_id not in r.text

    [load] = gw.fake.loads()
    assert load.body["lora_name"] == version_id
    assert Path(load.body["lora_path"]).is_dir()
    assert (Path(load.body["lora_path"]) / "adapter_model.safetensors").is_file()
    assert [s.body["model"] for s in gw.fake.completions()] == [version_id, version_id]
    assert version_id in gw.engine.resident

    rows = await gw.rows()
    assert {(row.model, row.adapter_version_id) for row in rows} == {("helper", version_id)}


async def test_pinned_version_name(gw: Gateway) -> None:
    v1 = gw.register_adapter("helper")
    gw.register_adapter("helper")
    r = await gw.chat(model="helper@v1")
    assert r.status_code == 200 and r.json()["model"] == "helper@v1"
    assert gw.fake.completions()[0].body["model"] == v1


async def test_checkpoint_name_serves_the_checkpoints_adapter(gw: Gateway) -> None:
    """A fine-tuning job's checkpoint id (adapters.checkpoints) is a model: the engine loads
    the checkpoint's files under the checkpoint's own id, which the client never sees."""
    quotas = Quotas.from_settings(gw.services.settings)
    job = jobs.submit(
        gw.services.db,
        gw.tenant_id,
        method="supervised",
        model=BASE,
        adapter_name="helper",
        quotas=quotas,
        actor="test",
    )
    limits = gw.services.limits
    digest = checkpoints.store_checkpoint(
        gw.services.store,
        write_tiny_adapter(gw.tmp / f"ckpt-{next(serial)}"),
        base=limits.base,
        max_rank=limits.max_rank,
        max_bytes=limits.max_bytes,
    )
    saved = job_records.add_checkpoint(gw.services.db, job.id, step=3, metrics={}, path="ckpt", digest=digest)
    model = checkpoints.checkpoint_model("helper", job.id, 3)
    r = await gw.chat(model=model)
    assert r.status_code == 200, r.text
    validate(r.json(), "CreateChatCompletionResponse")
    assert r.json()["model"] == model and saved.id not in r.text
    [load] = gw.fake.loads()
    assert load.body["lora_name"] == saved.id
    assert (Path(load.body["lora_path"]) / "adapter_model.safetensors").is_file()
    assert [s.body["model"] for s in gw.fake.completions()] == [saved.id]
    assert {(row.model, row.adapter_version_id) for row in await gw.rows()} == {(model, saved.id)}
    for unknown in (f"helper:{job.id}:ckpt-step-4", f"other:{job.id}:ckpt-step-3", "helper:ftjob-0:ckpt-step-3"):
        assert error_of(await gw.chat(model=unknown), 404)["code"] == "model_not_found"


async def test_deleted_version_is_unloaded_and_no_longer_served(gw: Gateway) -> None:
    gw.register_adapter("helper")
    v2 = gw.register_adapter("helper")
    gw.register_adapter("helper")  # v3 serves `helper`
    assert (await gw.chat(model="helper@v2")).status_code == 200
    assert v2 in gw.engine.resident and v2 in gw.fake.loras

    r = await gw.http.delete("/v1/models/helper@v2", headers=gw.auth)
    assert r.status_code == 200, r.text
    validate(r.json(), "DeleteModelResponse")
    assert v2 not in gw.engine.resident and v2 not in gw.fake.loras
    assert [s.body for s in gw.fake.seen if s.path == "/v1/unload_lora_adapter"] == [{"lora_name": v2}]

    err = error_of(await gw.chat(model="helper@v2"), 404)
    assert err["code"] == "model_not_found" and v2 not in err["message"]
    assert (await gw.chat(model="helper")).status_code == 200  # the alias serves on
    assert len(gw.fake.completions()) == 2


async def test_deleted_adapter_is_unloaded_with_every_version(gw: Gateway) -> None:
    v1 = gw.register_adapter("helper")
    v2 = gw.register_adapter("helper")
    assert (await gw.chat(model="helper@v1")).status_code == 200
    assert (await gw.chat(model="helper")).status_code == 200
    assert {v1, v2} <= set(gw.engine.resident)

    r = await gw.http.delete("/v1/adapters/helper", headers=gw.auth)
    assert r.status_code == 200, r.text
    assert not {v1, v2} & set(gw.engine.resident) and not {v1, v2} & set(gw.fake.loras)
    unloads = {s.body["lora_name"] for s in gw.fake.seen if s.path == "/v1/unload_lora_adapter"}
    assert unloads == {v1, v2}
    for model in ("helper", "helper@v1", "helper@v2"):
        assert error_of(await gw.chat(model=model), 404)["code"] == "model_not_found"


async def test_adapter_lost_by_engine_is_reloaded_and_retried(gw: Gateway) -> None:
    version_id = gw.register_adapter("helper")
    assert (await gw.chat(model="helper")).status_code == 200
    gw.fake.loras.clear()  # the engine restarted behind the gateway's back

    r = await gw.chat(model="helper")
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "helper"
    assert len(gw.fake.loads()) == 2
    models = [s.body["model"] for s in gw.fake.completions()]
    assert models == [version_id] * 3  # ok, 404, retried ok

    gw.fake.loras.clear()
    r = await gw.chat(model="helper", stream=True)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks(r) if c["choices"])
    assert len(gw.fake.loads()) == 3

    rows = await gw.rows()
    assert [row.status_code for row in rows] == [200, 200, 200]


async def test_adapter_404_twice_is_reported_with_the_public_name(gw: Gateway) -> None:
    version_id = gw.register_adapter("helper")
    not_found = raw_json("error_unknown_model_with_adapter")["body"]
    msg = {
        "error": {
            **not_found["error"],
            "message": f"The model `{version_id}` does not exist. Valid aliases: {BASE}, av-other-tenant.",
        }
    }
    gw.fake.script += [answer_with(404, msg), answer_with(404, msg)]
    r = await gw.chat(model="helper")
    err = error_of(r, 404)
    assert version_id not in r.text and "av-other-tenant" not in r.text
    assert "`helper`" in err["message"]
    assert len(gw.fake.completions()) == 2  # one retry, not a loop


async def test_adapter_engine_error_hides_the_internal_name(gw: Gateway) -> None:
    version_id = gw.register_adapter("helper")
    gw.fake.script.append(
        answer_with(
            400,
            {
                "error": {
                    "message": f"LoRA {version_id} rank too large",
                    "type": "BadRequestError",
                    "param": version_id,
                    "code": 400,
                }
            },
        )
    )
    r = await gw.chat(model="helper")
    err = error_of(r, 400)
    assert version_id not in r.text
    assert err["message"] == "LoRA helper rank too large"


@pytest.mark.parametrize(
    ("engine_status", "status"),
    [
        (500, 503),  # the engine failed: worth another try
        (400, 500),  # the engine refused this adapter: retrying will not help
    ],
)
async def test_adapter_load_refused_by_engine_is_told_in_tailors_words(
    gw: Gateway, engine_status: int, status: int
) -> None:
    version_id = gw.register_adapter("helper")
    # vLLM's own words name its internal adapter id and the file path on the engine host.
    gw.fake.load_error = (
        engine_status,
        f"Loading lora {version_id} failed: No adapter found for /srv/tailor/data/cache/adapters/{version_id}",
    )
    r = await gw.chat(model="helper")
    err = error_of(r, status)
    assert err["code"] == "model_load_failed"
    assert "'helper'" in err["message"]
    assert version_id not in r.text and "/srv/" not in r.text
    assert gw.fake.completions() == []
    [row] = await gw.rows()
    assert row.status_code == status and version_id not in (row.error or "")


async def test_concurrent_first_requests_share_one_load(gw: Gateway) -> None:
    version_id = gw.register_adapter("helper")
    rs = await asyncio.gather(*(gw.chat(model="helper", stream=i % 2 == 0) for i in range(6)))
    assert [r.status_code for r in rs] == [200] * 6
    assert [s.body["lora_name"] for s in gw.fake.loads()] == [version_id]


async def test_adapter_reload_failing_after_engine_restart(gw: Gateway) -> None:
    gw.register_adapter("helper")
    assert (await gw.chat(model="helper")).status_code == 200
    gw.fake.loras.clear()
    gw.fake.load_error = (500, "Internal Server Error")
    err = error_of(await gw.chat(model="helper"), 503)
    assert err["code"] == "model_load_failed"
    rows = await gw.rows()
    assert [row.status_code for row in rows] == [200, 503]


async def test_other_tenants_adapter_is_404(gw: Gateway) -> None:
    gw.register_adapter("helper")
    other = f"other{next(serial)}"
    r = await gw.http.post("/admin/tenants", json={"name": other}, headers=ADMIN)
    assert r.status_code == 201
    r = await gw.http.post(f"/admin/tenants/{other}/keys", json={}, headers=ADMIN)
    beta = {"authorization": f"Bearer {r.json()['key']}"}
    r = await gw.http.post("/v1/chat/completions", json={**CHAT, "model": "helper"}, headers=beta)
    error_of(r, 404, param="model")
    assert gw.fake.loads() == []


async def test_database_outage_serves_known_callers_and_loses_no_record(tmp_path: Path) -> None:
    """The database goes away (connection refused) for a while: requests of callers seen a
    moment ago are still served from the lookup caches, rate limits fail open, a never-seen
    key gets a 503 it can retry, and every interaction is written once the database is back."""
    from core.db import Database

    overrides = {"auth_cache_ttl_s": 0.05, "log_flush_interval_s": 0.05, "db_outage_grace_s": 60.0}
    async with running_gateway(tmp_path, **overrides) as run:
        views = tenant_view(run, tmp_path)
        gw = await views.__anext__()
        name = (await gw.http.get("/v1/limits", headers=gw.auth)).json()["tenant"]
        r = await gw.http.put(f"/admin/tenants/{name}/limits", json={"requests_per_minute": 1000}, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert (await gw.chat()).status_code == 200  # key, limits and model now known

        services, healthy = run.services, run.services.db
        down = Database("postgresql+psycopg://tailor:x@127.0.0.1:9/tailor?connect_timeout=1")
        services.db = services.interactions.db = services.meter.db = down
        try:
            await asyncio.sleep(0.1)  # past the cache TTL: every lookup asks the database
            served = [await gw.chat(stream=i % 2 == 0) for i in range(4)]
            assert [r.status_code for r in served] == [200] * 4
            unknown = await gw.http.post("/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer tk-x"})
            assert error_of(unknown, 503)["code"] == "database_unavailable"
            await asyncio.sleep(0.5)
            assert services.interactions.write_errors > 0  # it tried, and keeps trying
            metrics = (await gw.http.get("/metrics")).text
            assert 'tailor_database_unavailable_total{outcome="stale",what="key"}' in metrics
            assert 'tailor_database_unavailable_total{outcome="open",what="limits"}' in metrics
        finally:
            services.db = services.interactions.db = services.meter.db = healthy
            down.dispose()
        await asyncio.wait_for(services.interactions.flush(), timeout=30)
        rows = await gw.rows()
        assert [row.status_code for row in rows] == [200] * 5
        assert services.interactions.dropped == 0
        with contextlib.suppress(StopAsyncIteration):
            await views.__anext__()


async def test_output_token_cap(gw: Gateway) -> None:
    cap = gw.services.settings.max_output_tokens
    err = error_of(await gw.chat(max_tokens=cap + 1), 400, param="max_tokens")
    assert f"at most {cap}" in err["message"]
    error_of(await gw.chat(max_completion_tokens=cap + 1), 400, param="max_completion_tokens")
    assert gw.fake.completions() == []  # refused before the engine
    assert (await gw.chat(max_tokens=cap)).status_code == 200
    assert [row.status_code for row in await gw.rows()] == [400, 400, 200]
