"""A derived model (adapters.derived_model) on a real vLLM engine: SmolLM2-135M-Instruct cut
from 30 layers to 15 loads, answers chat completions, and serves a LoRA adapter made for it.

The engine is started the way Tailor starts its own (trainer.compute.engine.OwnEngine: the
serving engine's flags, `--enable-lora` included), on the derived directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.derived_model import derive_model
from core.config import Settings
from tests.conftest import MODEL_DIR
from trainer.compute.engine import EngineClient, OwnEngine

pytestmark = pytest.mark.engine

NAME = "SmolLM2-15L"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def derived(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (MODEL_DIR / "config.json").exists():
        pytest.skip(f"base model not prepared at {MODEL_DIR} (run `make install`)")
    out = tmp_path_factory.mktemp("models") / NAME
    derive_model(MODEL_DIR, out, "every-other")
    return out


@pytest.fixture(scope="module")
def engine(derived: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineClient]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("engine"),
        base_model_path=derived,
        base_model_name=NAME,
        engine_kv_cache_gib=1,
        engine_max_loras=2,
        max_resident_adapters=2,
    )
    own = OwnEngine(settings)
    client = own.start()
    try:
        yield client
    finally:
        client.close()
        own.stop()


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
