"""A derived model (adapters.derived_model) on a real vLLM engine: SmolLM2-135M-Instruct cut
from 30 layers to 15 loads, answers chat completions, and serves a LoRA adapter made for it.

The engine is started the way Tailor starts its own (trainer.compute.engine.OwnEngine: the
serving engine's flags, `--enable-lora` included), on the derived directory. A gateway then
serves it beside the session's 30-layer engine as two base models (TAILOR_BASE_MODELS).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.derived_model import derive_model
from core.config import Settings
from tests.conftest import MODEL_DIR, LiveEngine, live_engine
from tests.integration.conftest import (
    BASE_MODEL,
    TailorServer,
    TenantKeys,
    fact_file,
    make_tenant,
    running_tailor,
)
from tests.integration.test_fine_tuning_live import job_body, wait_for
from tests.openai_schema import validate
from trainer.compute.engine import EngineClient

pytestmark = pytest.mark.engine

NAME = "SmolLM2-15L"
FINISHED = ("succeeded", "failed", "cancelled")
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def derived(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (MODEL_DIR / "config.json").exists():
        pytest.skip(f"base model not prepared at {MODEL_DIR} (run `make install`)")
    out = tmp_path_factory.mktemp("models") / NAME
    derive_model(MODEL_DIR, out, "every-other")
    return out


@pytest.fixture(scope="module")
def derived_engine(derived: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveEngine]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("engine"),
        base_model_path=derived,
        base_model_name=NAME,
        engine_kv_cache_gib=1,
        engine_max_loras=2,
        max_resident_adapters=2,
    )
    with live_engine(settings) as engine:
        yield engine


@pytest.fixture(scope="module")
def engine(derived_engine: LiveEngine) -> EngineClient:
    return derived_engine.client


@pytest.fixture(scope="module")
def derived_adapter(derived: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained peft LoRA of the 15-layer model, non-zero, so it changes answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("adapters") / "derived-lora"
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(derived, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


def ask(engine: EngineClient, model: str) -> dict[str, Any]:
    body = {"model": model, "messages": QUESTION, "temperature": 0, "max_tokens": 8, "min_tokens": 8}
    r = engine.http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def test_the_engine_serves_the_derived_model(engine: EngineClient) -> None:
    models = engine.http.get("/v1/models").json()["data"]
    assert [m["id"] for m in models] == [NAME]
    answer = ask(engine, NAME)
    assert answer["usage"]["completion_tokens"] == 8
    assert answer["choices"][0]["message"]["content"]


def test_a_lora_adapter_of_the_derived_model_loads_and_answers(engine: EngineClient, derived_adapter: Path) -> None:
    base = ask(engine, NAME)["choices"][0]["message"]["content"]
    with engine.adapters({"derived-lora": derived_adapter}):
        tuned = ask(engine, "derived-lora")
    assert tuned["usage"]["completion_tokens"] == 8
    assert tuned["choices"][0]["message"]["content"] != base


def _upload(server: TailorServer, tenant: TenantKeys, name: str, adapter: Path, **fields: str) -> httpx.Response:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f in sorted(adapter.iterdir()):
            tar.add(f, arcname=f.name)
    files = {"file": ("adapter.tar.gz", buf.getvalue(), "application/gzip")}
    auth = {"Authorization": f"Bearer {tenant.key}"}
    return httpx.post(f"{server.url}/v1/adapters", data={"name": name, **fields}, files=files, headers=auth, timeout=60)


def _chat(server: TailorServer, tenant: TenantKeys, model: str) -> dict[str, Any]:
    raw = server.sdk(tenant).chat.completions.with_raw_response.create(
        model=model,
        messages=QUESTION,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=8,
    )
    body: dict[str, Any] = raw.http_response.json()
    validate(body, "CreateChatCompletionResponse")
    assert body["model"] == model and body["choices"][0]["message"]["content"]
    return body


def test_one_gateway_serves_both_bases_and_an_adapter_on_its_own_base(
    tmp_path: Path, derived: Path, derived_engine: LiveEngine, eval_engine: LiveEngine, derived_adapter: Path
) -> None:
    bases = {
        BASE_MODEL: {"path": str(MODEL_DIR), "engine_urls": [eval_engine.url], "api_key": eval_engine.key},
        NAME: {"path": str(derived), "engine_urls": [derived_engine.url], "api_key": derived_engine.key,
               "eval_engine_url": derived_engine.url, "eval_engine_api_key": derived_engine.key},
    }  # fmt: skip
    # Its trainer evaluates the default base's jobs on TAILOR_EVAL_ENGINE_URL (the 30-layer
    # engine) and the derived base's on that base's eval_engine_url: here the engine that also
    # serves it (no tenant traffic runs beside the job), which saves the test a third engine.
    # The derived base costs half as much per token: the report's costs differ by base.
    prices = {BASE_MODEL: {"prompt": 0.2, "completion": 0.4}, NAME: {"prompt": 0.1, "completion": 0.2}}
    with running_tailor(
        tmp_path, eval_engine, TAILOR_BASE_MODELS=json.dumps(bases), TAILOR_PRICES=json.dumps(prices)
    ) as server:
        tenant = make_tenant(server, "bases")
        job_id = _queue_job_on_the_derived_base(server, tenant)
        listed = server.sdk(tenant).models.with_raw_response.list().http_response.json()
        validate(listed, "ListModelsResponse")
        assert [m["id"] for m in listed["data"]] == [BASE_MODEL, NAME]
        for model in (BASE_MODEL, NAME):
            _chat(server, tenant, model)
        # Its shapes fit the first 15 layers of the 30-layer base, but it names the derived one.
        refused = _upload(server, tenant, "cut", derived_adapter)
        assert refused.status_code == 400, refused.text
        validate(refused.json(), "ErrorResponse")
        assert refused.json()["error"]["code"] == "invalid_adapter"
        registered = _upload(server, tenant, "cut", derived_adapter, base_model=NAME)
        assert registered.status_code == 201, registered.text
        _chat(server, tenant, "cut")
        with server.admin() as admin:
            engines = {e["url"]: e for e in admin.get("/admin/engines").json()}
        assert engines[derived_engine.url.rstrip("/")]["resident_adapters"]
        assert not engines[eval_engine.url.rstrip("/")]["resident_adapters"]
        _check_the_job_on_the_derived_base(server, tenant, job_id, derived_engine, eval_engine)


def _queue_job_on_the_derived_base(server: TailorServer, tenant: TenantKeys) -> str:
    """A tiny supervised job on the 15-layer base that also names the 30-layer one as a candidate
    (model selection), queued first so that it trains while the rest runs."""
    c = server.sdk(tenant)
    raw = c.fine_tuning.jobs.with_raw_response.create(
        model=NAME,
        training_file=fact_file(c),
        suffix="half-fact",
        method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 2, "max_steps": 1}}},  # type: ignore[typeddict-item]
        extra_body={"candidate_models": [NAME, BASE_MODEL]},
    )
    created = raw.http_response.json()
    validate(created, "FineTuningJob")
    assert created["model"] == NAME and created["candidate_models"] == [NAME, BASE_MODEL]
    return str(created["id"])


def _check_the_job_on_the_derived_base(
    server: TailorServer, tenant: TenantKeys, job_id: str, derived_engine: LiveEngine, eval_engine: LiveEngine
) -> None:
    c = server.sdk(tenant)
    wait_for("the job on the derived base", server, lambda: job_body(c, job_id)["status"] in FINISHED, 300)
    job = job_body(c, job_id)
    assert job["status"] == "succeeded", (job, server.log_tail())
    events = [e.message for e in c.fine_tuning.jobs.list_events(job_id, limit=100)]
    assert sum(m.startswith("Evaluation: token F1") for m in events) == 2, events
    chosen = next(m for m in events if m.startswith("Chose base model ")).split()[3].rstrip(":")
    # Each candidate was evaluated on its own base's evaluation engine.
    candidate = f"tailor-eval-{job_id}-candidate"
    assert candidate in derived_engine.served_adapters()
    assert candidate in eval_engine.served_adapters()
    auth = {"Authorization": f"Bearer {tenant.key}"}
    r = httpx.get(f"{server.url}/v1/fine_tuning/jobs/{job_id}/report.json", headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    table = r.json()["model_selection"]["candidates"]
    assert [row["base_model"] for row in table] == [NAME, BASE_MODEL]
    assert [row["base_model"] for row in table if row["chosen"]] == [chosen]
    for row in table:
        assert row["metric"] == "exact_match" and row["quality"] is not None
        assert row["p50_latency_s"] > 0 and row["mean_prompt_tokens"] > 0 and row["mean_completion_tokens"] > 0
    # Same tokens cost twice as much on the 30-layer base: per 1K requests, from its token means.
    half, full = table
    assert full["cost_per_1k_requests"] == pytest.approx(
        0.2 * full["mean_prompt_tokens"] + 0.4 * full["mean_completion_tokens"], rel=1e-6
    )
    assert half["cost_per_1k_requests"] == pytest.approx(
        0.1 * half["mean_prompt_tokens"] + 0.2 * half["mean_completion_tokens"], rel=1e-6
    )
    # The chosen candidate answers through the gateway, served on its base's engine.
    _chat(server, tenant, job["fine_tuned_model"])
    with server.admin() as admin:
        engines = {e["url"]: e for e in admin.get("/admin/engines").json()}
    on_derived = 2 if chosen == NAME else 1  # "cut", and the result if it runs there
    assert engines[derived_engine.url.rstrip("/")]["resident_adapters"] == on_derived
    assert engines[eval_engine.url.rstrip("/")]["resident_adapters"] == 2 - on_derived
