"""Engines that fetch adapters from a gateway over HTTP (TAILOR_ENGINE_ADAPTER_SOURCE=url).

The gateway runs for real on a loopback port (uvicorn in a thread, the app's lifespan run by
`running_gateway`), and the engine's side is Tailor's own resolver code (adapters.vllm_resolver),
so what an engine would download, verify and hand vLLM is what is checked here; who may read
what is tried with every other key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI
from vllm.lora.resolver import LoRAResolverRegistry

from adapters.adapter_source import CACHE_ENV, SOURCE_ENV, AdapterSource
from adapters.ports import pick_free_port
from adapters.store import MANIFEST, CorruptAdapterError
from adapters.vllm_resolver import RESOLVER_NAME, TailorResolver, register
from core.models import AdapterVersion
from core.states import VersionState
from tests.gateway.gateway_world import ADMIN, Gateway, Running, running_gateway

ENGINE_KEY = "engine-key-" + "x" * 20


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """`app` on a loopback port, as engines on other hosts reach a gateway."""
    port = pick_free_port("127.0.0.1")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the gateway did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    async with running_gateway(
        tmp_path_factory.mktemp("url-mode"), engine_adapter_source="url", engine_api_key=ENGINE_KEY
    ) as run:
        yield run


@pytest.fixture(scope="module")
def gateway_url(shared: Running) -> Iterator[str]:
    with serving(shared.app) as url:
        yield url


def source(url: str, tmp_path: Path, key: str = ENGINE_KEY) -> AdapterSource:
    return AdapterSource(url, key, tmp_path / "engine-cache")


async def test_an_engine_gets_exactly_the_stored_files(gw: Gateway, gateway_url: str, tmp_path: Path) -> None:
    version_id = gw.register_adapter("fetched")
    with gw.services.db.session() as s:
        digest = s.get(AdapterVersion, version_id).digest  # type: ignore[union-attr]
    stored = gw.services.store.local_path(digest)
    path = source(gateway_url, tmp_path).fetch(version_id)
    assert path == tmp_path / "engine-cache" / digest
    names = sorted(p.name for p in stored.iterdir())
    assert sorted(p.name for p in path.iterdir()) == names and MANIFEST in names
    assert all((path / n).read_bytes() == (stored / n).read_bytes() for n in names)


async def test_only_the_engines_key_opens_the_routes(gw: Gateway, gateway_url: str) -> None:
    version_id = gw.register_adapter("guarded")
    route = f"{gateway_url}/internal/engine/adapters/{version_id}"
    tenant, admin = gw.auth["authorization"], ADMIN["authorization"]
    for headers in ({}, {"authorization": tenant}, {"authorization": admin}, {"authorization": "Bearer nope"}):
        r = httpx.get(route, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert set(r.json()["error"]) >= {"message", "type", "code"}
    r = httpx.get(route, headers={"authorization": f"Bearer {ENGINE_KEY}"})
    assert r.status_code == 200 and len(r.json()["digest"]) == 64
    # The engine key is not a tenant's or the admin's key.
    r = httpx.get(f"{gateway_url}/v1/models", headers={"authorization": f"Bearer {ENGINE_KEY}"})
    assert r.status_code == 401


async def test_nothing_but_a_versions_listed_files(gw: Gateway, gateway_url: str) -> None:
    version_id = gw.register_adapter("listed")
    with gw.services.db.session() as s:
        digest = s.get(AdapterVersion, version_id).digest  # type: ignore[union-attr]
    # Something else the store's folder could hold, and paths that try to climb out.
    (gw.services.store.local_path(digest) / "notes.txt").write_text("not listed")
    auth = {"authorization": f"Bearer {ENGINE_KEY}"}
    base = f"{gateway_url}/internal/engine"
    assert httpx.get(f"{base}/store/{digest[:2]}/{digest}/adapter_config.json", headers=auth).status_code == 200
    for path in (
        f"/store/{digest[:2]}/{digest}/notes.txt",
        f"/store/00/{digest}/adapter_config.json",
        f"/store/{digest[:2]}/{digest}/..%2F..%2Ftailor.db",
        "/store/..%2F../tailor.db/x",
        "/adapters/..%2F..%2Fetc",
        "/adapters/av-unknown",
    ):
        r = httpx.get(base + path, headers=auth)
        assert r.status_code in (400, 404), (path, r.status_code, r.text)


async def test_unknown_unservable_and_odd_names_resolve_to_nothing(
    gw: Gateway, gateway_url: str, tmp_path: Path
) -> None:
    failed = gw.register_adapter("failed")
    with gw.services.db.session() as s:
        s.get(AdapterVersion, failed).state = VersionState.FAILED  # type: ignore[union-attr]
        s.commit()
    engine_side = source(gateway_url, tmp_path)
    for name in ("av-unknown", failed, "../secret.key", "a/b", "x" * 200, ""):
        assert engine_side.fetch(name) is None, name
    with pytest.raises(httpx.HTTPStatusError):
        source(gateway_url, tmp_path, key="wrong").fetch(gw.register_adapter("keyed"))


async def test_a_tampered_file_never_reaches_vllm(gw: Gateway, gateway_url: str, tmp_path: Path) -> None:
    version_id = gw.register_adapter("tampered")
    with gw.services.db.session() as s:
        digest = s.get(AdapterVersion, version_id).digest  # type: ignore[union-attr]
    weights = gw.services.store.local_path(digest) / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit off
    try:
        engine_side = source(gateway_url, tmp_path)
        with pytest.raises(CorruptAdapterError):
            engine_side.fetch(version_id)
        assert not (tmp_path / "engine-cache" / digest).exists()
        # vLLM's side: no adapter, so the request is vLLM's 404 and the gateway reports a failed load.
        assert await TailorResolver(engine_side).resolve_lora("base", version_id) is None
    finally:
        weights.write_bytes(data)  # the tiny adapters of these tests all share one digest


async def test_the_resolver_hands_vllm_a_local_folder(gw: Gateway, gateway_url: str, tmp_path: Path) -> None:
    version_id = gw.register_adapter("resolved")
    request = await TailorResolver(source(gateway_url, tmp_path)).resolve_lora("base", version_id)
    assert request is not None and request.lora_name == version_id
    assert (Path(request.lora_path) / "adapter_config.json").is_file()


async def test_the_plugin_registers_only_where_configured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    LoRAResolverRegistry.resolvers.pop(RESOLVER_NAME, None)
    monkeypatch.delenv(SOURCE_ENV, raising=False)
    register()
    assert RESOLVER_NAME not in LoRAResolverRegistry.get_supported_resolvers()
    monkeypatch.setenv(SOURCE_ENV, "file:///etc")
    with pytest.raises(ValueError, match="http"):
        register()
    monkeypatch.setenv(SOURCE_ENV, "http://gateway:8000")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    try:
        register()
        resolver = LoRAResolverRegistry.get_resolver(RESOLVER_NAME)
        assert isinstance(resolver, TailorResolver) and resolver.source.url == "http://gateway:8000"
    finally:
        LoRAResolverRegistry.resolvers.pop(RESOLVER_NAME, None)


async def test_a_gateway_that_loads_by_path_has_no_such_routes(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, engine_api_key=ENGINE_KEY) as run:
        r = await run.http.get("/internal/engine/adapters/av-1", headers={"authorization": f"Bearer {ENGINE_KEY}"})
        assert r.status_code == 404
        assert "/internal/engine/adapters/{name}" not in run.app.openapi()["paths"]


async def test_an_address_locked_out_for_wrong_keys_still_lets_the_engine_in(gw: Gateway, gateway_url: str) -> None:
    route = f"{gateway_url}/internal/engine/adapters/{gw.register_adapter('locked')}"
    statuses = [httpx.get(route, headers={"authorization": "Bearer wrong"}).status_code for _ in range(40)]
    assert statuses[0] == 401 and statuses[-1] == 429  # this address is locked out now
    assert httpx.get(route, headers={"authorization": f"Bearer {ENGINE_KEY}"}).status_code == 200
    assert httpx.get(f"{gateway_url}/v1/models", headers=gw.auth).status_code == 429
