"""Fake vLLM servers for the tests of adapters.engines.EnginePool, and pools on them.

`FakeVLLM` is an httpx.MockTransport handler standing in for several engines (told apart
by host). It keeps what each engine really has loaded, records every call, and can be
told to refuse connections, to report unhealthy, to "restart" (forget its adapters), or
to hold loads until a test lets them finish. Like vLLM, it answers /v1 routes only with
the engine's key when it has one, and lists the model it serves on /v1/models.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import httpx

from adapters.engine_checks import PROBE_NAME, EngineExpectation
from adapters.engines import EnginePool, LoraRef

URLS = ["http://e0:8000", "http://e1:8000", "http://e2:8000"]
LOAD = "/v1/load_lora_adapter"
UNLOAD = "/v1/unload_lora_adapter"
MODELS = "/v1/models"
BASE = "SmolLM2-135M-Instruct"
EXPECT = EngineExpectation(served_name=BASE, max_lora_rank=16)


@dataclass
class Call:
    engine: str
    path: str
    name: str | None = None
    authorization: str | None = None


@dataclass
class FakeVLLM:
    calls: list[Call] = field(default_factory=list)
    loaded: dict[str, set[str]] = field(default_factory=dict)  # engine -> adapters it really has
    refuse: set[str] = field(default_factory=set)  # engines refusing connections
    unhealthy: set[str] = field(default_factory=set)  # engines whose /health says 503
    refuse_load_of: set[str] = field(default_factory=set)  # loads of these adapters: connection drops
    load_gate: asyncio.Event | None = None  # when set: loads wait for it
    load_seen: asyncio.Event = field(default_factory=asyncio.Event)
    unload_gate: asyncio.Event | None = None
    unload_seen: asyncio.Event = field(default_factory=asyncio.Event)
    on_load_done: list[object] = field(default_factory=list)  # callables run as a load returns
    keys: dict[str, str] = field(default_factory=dict)  # engine -> its --api-key
    served: dict[str, str] = field(default_factory=dict)  # engine -> its --served-model-name (default BASE)
    max_rank: dict[str, int] = field(default_factory=dict)  # engine -> its --max-lora-rank (default 64)
    no_runtime_lora: set[str] = field(default_factory=set)  # engines without /v1/load_lora_adapter

    def engine_of(self, request: httpx.Request) -> str:
        return f"http://{request.url.host}:{request.url.port}"

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        engine = self.engine_of(request)
        path = request.url.path
        body = json.loads(request.content) if request.content else {}
        name = body.get("lora_name")
        self.calls.append(Call(engine, path, name, request.headers.get("authorization")))
        if engine in self.refuse or (path == LOAD and name in self.refuse_load_of):
            raise httpx.ConnectError("connection refused", request=request)
        have = self.loaded.setdefault(engine, set())
        if path == "/health":  # unauthenticated in vLLM
            return httpx.Response(503 if engine in self.unhealthy else 200)
        key = self.keys.get(engine)
        if key and request.headers.get("authorization") != f"Bearer {key}":
            return httpx.Response(401, json={"error": "Unauthorized"})
        if path == MODELS:
            served = self.served.get(engine, BASE)
            cards = [{"id": served, "object": "model", "root": f"/models/{served}", "parent": None}]
            cards += [{"id": n, "object": "model", "root": f"/store/{n}", "parent": served} for n in sorted(have)]
            return httpx.Response(200, json={"object": "list", "data": cards})
        if path in (LOAD, UNLOAD) and engine in self.no_runtime_lora:
            return httpx.Response(404, json={"detail": "Not Found"})
        if path == LOAD and name == PROBE_NAME:
            rank = int(body["lora_path"].rsplit("-", 1)[1])
            if rank > self.max_rank.get(engine, 64):
                return httpx.Response(
                    400, json={"message": f"LoRA rank {rank} is greater than max_lora_rank {self.max_rank[engine]}."}
                )
            have.add(name)
            return httpx.Response(200, text="Success")
        if path == LOAD:
            self.load_seen.set()
            if self.load_gate is not None:
                await self.load_gate.wait()
            if name in have:
                return httpx.Response(
                    400,
                    json={
                        "object": "error",
                        "type": "BadRequestError",
                        "code": 400,
                        "message": f"The lora adapter '{name}' has already been loaded.",
                    },
                )
            if name.startswith("bad"):
                return httpx.Response(400, json={"message": f"Invalid LoRA adapter {name}: no adapter_config.json"})
            if name.startswith("boom"):
                return httpx.Response(500, text="Internal Server Error")
            assert body["lora_path"] == f"/store/{name}"
            have.add(name)
            for hook in self.on_load_done:
                hook(engine, name)  # type: ignore[operator]
            return httpx.Response(200, text=f"Success: LoRA adapter '{name}' added successfully.")
        if path == UNLOAD:
            self.unload_seen.set()
            if self.unload_gate is not None:
                await self.unload_gate.wait()
            if name not in have:
                return httpx.Response(404, json={"message": f"The lora adapter '{name}' cannot be found."})
            have.discard(name)
            return httpx.Response(200, text="ok")
        return httpx.Response(404)

    def restart(self, engine: str) -> None:
        self.loaded[engine] = set()

    def count(self, path: str, name: str | None = None, engine: str | None = None) -> int:
        return sum(
            1
            for c in self.calls
            if c.path == path and (name is None or c.name == name) and (engine is None or c.engine == engine)
        )


def lora(name: str) -> LoraRef:
    return LoraRef(name=name, local_path=lambda: f"/store/{name}")


async def make_pool(client: httpx.AsyncClient, urls: list[str] = URLS, max_resident: int = 8) -> EnginePool:
    pool = EnginePool(urls, client, expect=EXPECT, max_resident=max_resident)
    await pool.wait_healthy(5)
    return pool


async def use(pool: EnginePool, name: str | None) -> str:
    """One whole request: acquire, release; returns the engine it ran on."""
    lease = await pool.acquire(lora(name) if name else None)
    pool.release(lease)
    return lease.url


def home_of(pool: EnginePool, name: str) -> str:
    return max(pool.engines, key=lambda e: e.score(name)).url


def engine(pool: EnginePool, url: str):  # type: ignore[no-untyped-def]
    return next(e for e in pool.engines if e.url == url)
