"""The pool and the engine checks with engines that fetch adapters by name (TAILOR_ENGINE_ADAPTER_SOURCE=url).

The fake engine plays vLLM with Tailor's resolver: a request naming an adapter it does not
know (here /tokenize) is resolved when the name is one the resolver can fetch, and is vLLM's
404 otherwise; /v1/load_lora_adapter is never needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from adapters.adapter_source import CACHE_ENV, SOURCE_ENV
from adapters.engine_checks import EngineExpectation, find_problem, load_call
from adapters.engines import Engine, EnginePool, LoraRef, bearer
from adapters.supervisor import EngineLaunch
from core.config import Settings
from core.errors import TailorError

URL = "http://e0:8000"
BASE = "SmolLM2-135M-Instruct"


@dataclass
class ResolvingEngine:
    fetchable: set[str] = field(default_factory=set)
    too_large: set[str] = field(default_factory=set)  # found, but vLLM's add_lora refuses them
    loaded: set[str] = field(default_factory=set)
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/health":
            return httpx.Response(200)
        if path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": BASE, "parent": None}]})
        body = httpx.Response(200, content=request.content).json()
        self.calls.append((path, body))
        if path == "/tokenize":
            name = body["model"]
            if name in self.too_large:
                return httpx.Response(
                    400, json={"error": {"message": f"LoRA adapter '{name}' was found but could not be loaded."}}
                )
            if name not in self.fetchable:
                return httpx.Response(404, json={"error": {"message": f"The model `{name}` does not exist."}})
            self.loaded.add(name)
            return httpx.Response(200, json={"count": 0, "tokens": [], "max_model_len": 2048})
        if path == "/v1/unload_lora_adapter":
            self.loaded.discard(body["lora_name"])
            return httpx.Response(200, text="Success")
        return httpx.Response(404, json={"detail": "Not Found"})


def no_local_copy() -> str:
    raise AssertionError("an engine that fetches by name needs no copy on the gateway's host")


@pytest.fixture
def engine() -> ResolvingEngine:
    return ResolvingEngine(fetchable={"av-1"})


@pytest.fixture
async def pool(engine: ResolvingEngine) -> EnginePool:
    client = httpx.AsyncClient(transport=httpx.MockTransport(engine))
    expect = EngineExpectation(served_name=BASE, max_lora_rank=16, fetches_adapters=True)
    pool = EnginePool([Engine(url=URL, headers=bearer("k"))], client, expect=expect, max_resident=1)
    pool.engines[0].healthy = True
    return pool


def test_load_call_by_path_and_by_name() -> None:
    assert load_call("av-1", "/cache/x", by_name=False) == (
        "/v1/load_lora_adapter",
        {"lora_name": "av-1", "lora_path": "/cache/x"},
    )
    assert load_call("av-1", "", by_name=True) == ("/tokenize", {"model": "av-1", "prompt": ""})


async def test_an_adapter_is_made_resident_by_its_name(pool: EnginePool, engine: ResolvingEngine) -> None:
    target = pool.engines[0]
    await pool.ensure_loaded(target, LoraRef("av-1", no_local_copy))
    assert engine.loaded == {"av-1"} and "av-1" in target.resident
    assert [path for path, _ in engine.calls] == ["/tokenize"]
    # LRU eviction and unloading work on names as before.
    engine.fetchable.add("av-2")
    await pool.ensure_loaded(target, LoraRef("av-2", no_local_copy))
    assert engine.loaded == {"av-2"} and list(target.resident) == ["av-2"]


async def test_a_name_the_engine_cannot_fetch_is_a_502_not_the_clients_fault(
    pool: EnginePool, engine: ResolvingEngine
) -> None:
    with pytest.raises(TailorError) as info:
        await pool.ensure_loaded(pool.engines[0], LoraRef("av-404", no_local_copy))
    assert (info.value.status, info.value.code) == (502, "engine_error")
    assert "av-404" not in pool.engines[0].resident


async def test_an_adapter_the_engine_refuses_is_a_400(pool: EnginePool, engine: ResolvingEngine) -> None:
    engine.too_large.add("av-big")
    with pytest.raises(TailorError) as info:
        await pool.ensure_loaded(pool.engines[0], LoraRef("av-big", no_local_copy))
    assert info.value.status == 400


async def test_an_engine_that_fetches_is_not_probed_at_start() -> None:
    """At a cold start no gateway serves yet (each waits for a checked engine), so a probe the
    engine would fetch from a gateway could never pass: health and the base model decide, and
    the first adapter load shows a misconfigured engine (502 above, its reason in its log)."""
    engine = ResolvingEngine(fetchable=set())
    probed: list[str] = []
    expect = EngineExpectation(
        served_name=BASE, max_lora_rank=16, probe_adapter=lambda: probed.append("x") or "", fetches_adapters=True
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(engine)) as client:
        assert await find_problem(client, Engine(url=URL), expect, thorough=True) is None
    assert probed == [] and engine.calls == []


@pytest.mark.parametrize(
    ("host", "source_url"),
    [("127.0.0.1", "http://127.0.0.1:8123"), ("0.0.0.0", "http://127.0.0.1:8123"), ("::1", "http://[::1]:8123")],
)
def test_the_child_engine_is_told_where_to_fetch(tmp_path: Path, host: str, source_url: str) -> None:
    settings = Settings(data_dir=tmp_path, engine_adapter_source="url", host=host, port=8123)
    env = EngineLaunch.from_settings(settings).env("key")
    assert env[SOURCE_ENV] == source_url and env["VLLM_API_KEY"] == "key"
    assert env[CACHE_ENV] == str((tmp_path / "cache" / "adapters").resolve())
    # A full model's own engine serves no adapters; a gateway that loads by path says nothing.
    dedicated = EngineLaunch.dedicated(settings, model_path=tmp_path / "m", served_name="m")
    assert SOURCE_ENV not in dedicated.env("key")
    assert SOURCE_ENV not in EngineLaunch.from_settings(Settings(data_dir=tmp_path)).env("key")


def test_engines_run_by_the_operator_need_a_key_to_fetch_with(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="TAILOR_ENGINE_API_KEY"):
        Settings(data_dir=tmp_path, engine_adapter_source="url", engine_urls=["http://gpu1:8000"])
    keyed = Settings(
        data_dir=tmp_path, engine_adapter_source="url", engine_urls=["http://gpu1:8000"], engine_api_key="k" * 16
    )
    assert keyed.engine_adapter_source == "url"
