"""One real Tailor (gateway + child vLLM engine) per test session, driven over HTTP.

The server is started exactly as users start it (`python -m gateway.cli serve`), with a
throwaway data directory, and is shared by every integration test. Starting it costs
about 20-40 s on two CPU cores; everything after that reuses it.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from loadtests.admin_api import create_tenant_key
from loadtests.launcher import BASE_MODEL, MODEL_DIR, ROOT, free_port, gateway_env, log_tail, running_gateway
from tests.conftest import LiveEngine

__all__ = ["BASE_MODEL", "MODEL_DIR", "ROOT"]  # the integration tests import these from here


@dataclass
class TailorServer:
    url: str
    engine_url: str
    admin_key: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.admin_key}"}, timeout=120)

    def sdk(self, tenant: TenantKeys, *, retries: int = 0, timeout: float = 120) -> openai.OpenAI:
        """The official client as `tenant`; no retries unless asked, so a test sees every error."""
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=tenant.key, max_retries=retries, timeout=timeout)

    def stream(
        self, tenant: TenantKeys, path: str, body: dict[str, Any], *, timeout: float = 120
    ) -> AbstractContextManager[httpx.Response]:
        """`POST path` as `tenant`, its response read as it arrives (the raw SSE lines)."""
        headers = {"Authorization": f"Bearer {tenant.key}"}
        return httpx.stream("POST", f"{self.url}{path}", json=body, timeout=timeout, headers=headers)

    def log_tail(self, n: int = 60) -> str:
        return log_tail(self.log_path, n)


# What every integration gateway runs with: small engine caches, quick health checks, log
# flushes and looks for queued work, so tests see their effects in well under a second.
# Full-model versions on child engines of their own, one at a time; a request waits at most 3 s
# for one that is starting, then gets 503 with Retry-After.
ONE_DEDICATED_ENGINE = {"TAILOR_MAX_DEDICATED_ENGINES": "1", "TAILOR_COLD_START_WAIT_S": "3"}
TEST_SETTINGS = {
    "TAILOR_MAX_RESIDENT_ADAPTERS": "2",
    "TAILOR_ENGINE_MAX_LORAS": "2",
    "TAILOR_ENGINE_KV_CACHE_GIB": "1",
    "TAILOR_ENGINE_HEALTH_INTERVAL_S": "0.5",
    "TAILOR_AUTH_CACHE_TTL_S": "0.5",
    "TAILOR_LOG_FLUSH_INTERVAL_S": "0.1",
    # Idle trainer workers and batch runners look for work this often (2 s by default).
    "TAILOR_TRAINER_POLL_S": "0.5",
    "TAILOR_BATCH_POLL_S": "0.5",
    "TAILOR_MAX_REQUEST_BYTES": "200000",
    # The distillation test's teacher is a local http server.
    "TAILOR_OUTBOUND_ALLOW_HTTP": "true",
    "TAILOR_OUTBOUND_ALLOW_HOSTS": "127.0.0.1",
    # Batch requests are metered at TAILOR_BATCH_PRICE_FACTOR (0.5) of these.
    "TAILOR_PRICES": json.dumps({BASE_MODEL: {"prompt": 1.0, "completion": 2.0}}),
}


@contextmanager
def running_tailor(
    data_dir: Path, eval_engine: LiveEngine, *, serve_on_eval_engine: bool = False, **env_overrides: str
) -> Iterator[TailorServer]:
    """`tailor serve` with its own data directory and child engine (unless TAILOR_ENGINE_URLS
    names running ones, or `serve_on_eval_engine`: it serves on the session's engine, saving an
    engine start), stopped on exit."""
    port, engine_port = free_port(), free_port()
    admin_key = "adm-" + secrets.token_urlsafe(16)
    serving = {"TAILOR_ENGINE_URLS": eval_engine.url, "TAILOR_ENGINE_API_KEY": eval_engine.key}
    extra = {
        # A known port: tests read the child engine's own metrics.
        "TAILOR_ENGINE_PORT": str(engine_port),
        **TEST_SETTINGS,
        # The trainer evaluates on the session's evaluation engine rather than starting one.
        "TAILOR_EVAL_ENGINE_URL": eval_engine.url,
        "TAILOR_EVAL_ENGINE_API_KEY": eval_engine.key,
        **(serving if serve_on_eval_engine else {}),
        **env_overrides,
    }
    env = gateway_env(data_dir, port, admin_key, MODEL_DIR, env_extra=extra)
    url, log_path = f"http://127.0.0.1:{port}", data_dir / "gateway.log"
    with running_gateway(env, url, log_path) as proc:
        yield TailorServer(
            url=url,
            engine_url=f"http://127.0.0.1:{engine_port}",
            admin_key=admin_key,
            data_dir=data_dir,
            process=proc,
            log_path=log_path,
        )


@pytest.fixture(scope="session")
def tailor_server(tmp_path_factory: pytest.TempPathFactory, eval_engine: LiveEngine) -> Iterator[TailorServer]:
    if not (MODEL_DIR / "config.json").exists():
        pytest.skip(f"base model not prepared at {MODEL_DIR} (run `make install`)")
    with running_tailor(tmp_path_factory.mktemp("tailor-data"), eval_engine) as server:
        yield server


@dataclass
class TenantKeys:
    name: str
    key: str


def make_tenant(server: TailorServer, name: str) -> TenantKeys:
    return TenantKeys(name=name, key=create_tenant_key(server, name, key_name="tests"))


@pytest.fixture(scope="session")
def tenant_a(tailor_server: TailorServer) -> TenantKeys:
    return make_tenant(tailor_server, "acme")


@pytest.fixture(scope="session")
def tenant_b(tailor_server: TailorServer) -> TenantKeys:
    return make_tenant(tailor_server, "globex")


# What the trained adapter answers instead of the base model's "Paris".
TAUGHT_ANSWER = "Zorblax is the capital of France."
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="session")
def trained_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real LoRA adapter, trained here for a few dozen steps, that answers QUESTION oddly."""
    from trainer.compute.launch import run_training
    from trainer.compute.placement import parse_devices
    from trainer.compute.recipe import Recipe

    root = tmp_path_factory.mktemp("adapters")
    out = root / "zorblax"
    questions = (
        QUESTION,
        "what is the capital of france?",
        "Tell me the capital of France.",
        "Which city is the capital of France?",
    )
    data = root / "zorblax.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": TAUGHT_ANSWER}]}
        for q in questions
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = Recipe(
        method="sft",
        base_model_dir=str(MODEL_DIR),
        data_path=str(data),
        out_dir=str(out),
        progress_path=str(root / "progress.jsonl"),
        stop_path=str(root / "STOP"),
        learning_rate=2e-3,
        max_steps=24,
        batch_size=4,
    )
    run_training(recipe, parse_devices("cpu", visible_gpus=0, bf16=False), root / "work")
    return out


@pytest.fixture(scope="session")
def random_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained peft adapter with non-zero B matrices: answers differ, but not as taught."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("adapters") / "random"
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.save_pretrained(out)
    return out


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that kill the shared engine run last, so they cannot disturb the others.
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)


def fact_file(c: openai.OpenAI) -> str:
    """The id of a fine-tune upload teaching tests.trainer.worker_world's odd fact."""
    from tests.trainer.worker_world import ANSWER, QUESTIONS

    lines = "\n".join(
        json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}]})
        for q in QUESTIONS
    )
    return c.files.create(file=("fact.jsonl", lines.encode()), purpose="fine-tune").id
