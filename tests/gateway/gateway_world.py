"""A running gateway with a fake vLLM behind it, for the gateway's tests.

`running_gateway` starts the real app in its lifespan with the upstream HTTP client swapped for
an `httpx.MockTransport` whose handler (`FakeVLLM`) plays vLLM's OpenAI server, answering with
raw bodies captured from a real vLLM 0.32 (tests/fixtures/vllm_raw/); `tenant_view` gives a
test a fresh tenant and key on it. Also the helpers the gateway's test modules share: a tiny
PEFT adapter written without torch, and OpenAI error and stream checks.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI
from safetensors.numpy import save_file
from sqlalchemy import select

from adapters import registry
from adapters.registry import VersionInfo
from core.config import Settings
from core.models import Interaction
from gateway.app import create_app
from gateway.services import Services
from tests.openai_schema import validate
from tests.tiny_llama import HEADS, HIDDEN, KV_HEADS, LAYERS, TINY_CONFIG

RAW = Path(__file__).resolve().parents[1] / "fixtures" / "vllm_raw"
ENGINE = "http://engine.test"
BASE = "tiny-base"  # the base model's name, for clients and as the engine serves it
ADMIN = {"authorization": "Bearer adm"}
CHAT = {
    "model": BASE,
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "max_tokens": 12,
}
COMPLETION = {"model": BASE, "prompt": "The capital of France is", "max_tokens": 8}


def raw_json(name: str) -> dict[str, Any]:
    return json.loads((RAW / f"{name}.json").read_text())


def raw_sse(name: str) -> str:
    return (RAW / f"{name}.sse").read_text()


# --------------------------------------------------------------------------- fake vLLM


def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(data), size):
            yield data[i : i + size]
            await asyncio.sleep(0)

    return gen()


@dataclass
class Seen:
    path: str
    body: Any
    authorization: str | None = None


Responder = Callable[[httpx.Request, dict[str, Any]], httpx.Response]


@dataclass
class FakeVLLM:
    """vLLM's OpenAI server as far as the gateway can tell.

    Serves BASE plus whatever LoRA adapters were loaded through /v1/load_lora_adapter,
    answers an unknown model with vLLM's own 404, and streams with `piece` bytes per
    chunk. `script` holds one-off answers for the next completion requests (a responder
    or an exception to raise).
    """

    piece: int = 7
    newline: str = "\n"
    loras: dict[str, str] = field(default_factory=dict)  # name -> path
    seen: list[Seen] = field(default_factory=list)
    script: list[Responder | Exception] = field(default_factory=list)
    replace_text: tuple[str, str] | None = None  # rewrite answer text (non-ASCII tests)
    load_error: tuple[int, str] | None = None  # answer every adapter load with this
    base: str = BASE  # the base model it serves

    def reset(self) -> None:
        fresh = FakeVLLM(base=self.base)
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(fresh, name))

    def completions(self) -> list[Seen]:
        return [s for s in self.seen if s.path in ("/v1/chat/completions", "/v1/completions")]

    def loads(self) -> list[Seen]:
        return [s for s in self.seen if s.path == "/v1/load_lora_adapter"]

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/health":
            return httpx.Response(200)
        if path == "/v1/models":  # the pool's identity check: which base model is served
            cards = [{"id": self.base, "object": "model", "parent": None}]
            return httpx.Response(200, json={"object": "list", "data": cards})
        raw = await request.aread()
        body = json.loads(raw) if raw else None
        self.seen.append(Seen(path, body, request.headers.get("authorization")))
        if path == "/v1/load_lora_adapter":
            if self.load_error is not None:
                return httpx.Response(self.load_error[0], text=self.load_error[1])
            if body["lora_name"] in self.loras:
                return self._error(400, f"The lora adapter '{body['lora_name']}' has already been loaded.")
            self.loras[body["lora_name"]] = body["lora_path"]
            return httpx.Response(200, text=f"Success: LoRA adapter '{body['lora_name']}' added successfully.")
        if path == "/v1/unload_lora_adapter":
            self.loras.pop(body["lora_name"], None)
            return httpx.Response(200, text="Success")
        if path not in ("/v1/chat/completions", "/v1/completions"):
            return httpx.Response(404, json={"detail": "Not Found"})
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, Exception):
                raise step
            answer = step(request, body)
            return await answer if inspect.isawaitable(answer) else answer
        model = body["model"]
        if model != self.base and model not in self.loras:
            err = raw_json("error_unknown_model_with_adapter")["body"]
            aliases = ", ".join([self.base, *self.loras])
            msg = f"The model `{model}` does not exist. Valid aliases: {aliases}."
            return httpx.Response(404, json={"error": {**err["error"], "message": msg}})
        chat = path == "/v1/chat/completions"
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            name = ("chat_stream" if chat else "completion_stream") + ("_usage" if usage else "")
            if not chat and not usage:
                name = "completion_stream_usage"  # no plain capture; drop its usage event
                return self.stream(_drop_usage(raw_sse(name)), model)
            return self.stream(raw_sse(name), model)
        answer = raw_json("chat" if chat else "completion")["body"]
        answer["model"] = model
        text = json.dumps(answer)
        if self.replace_text:
            text = text.replace(*self.replace_text)
        return httpx.Response(200, content=text.encode(), headers={"content-type": "application/json"})

    def stream(self, sse: str, model: str) -> httpx.Response:
        sse = sse.replace('"model":"base"', f'"model":{json.dumps(model)}')
        if self.replace_text:
            sse = sse.replace(*self.replace_text)
        data = sse.replace("\n", self.newline).encode()
        return httpx.Response(
            200,
            content=pieces(data, self.piece),
            headers={"content-type": "text/event-stream; charset=utf-8"},
        )

    @staticmethod
    def _error(status: int, message: str) -> httpx.Response:
        return httpx.Response(
            status,
            json={
                "error": {
                    "message": message,
                    "type": "BadRequestError",
                    "param": None,
                    "code": status,
                }
            },
        )


def _drop_usage(sse: str) -> str:
    return "\n\n".join(e for e in sse.split("\n\n") if '"usage"' not in e)


def answer_with(status: int, body: Any) -> Responder:
    def respond(_request: httpx.Request, _body: dict[str, Any]) -> httpx.Response:
        if isinstance(body, (bytes, str)):
            return httpx.Response(status, content=body)
        return httpx.Response(status, json=body)

    return respond


def stream_of(data: bytes, *, piece: int = 7, fail_after: int | None = None) -> Responder:
    """A streamed 200 of `data`; with `fail_after`, the connection dies after that many bytes."""

    async def gen() -> AsyncIterator[bytes]:
        sent = 0
        for i in range(0, len(data), piece):
            if fail_after is not None and sent >= fail_after:
                raise httpx.ReadError("connection reset by peer")
            chunk = data[i : i + piece]
            sent += len(chunk)
            yield chunk
            await asyncio.sleep(0)

    def respond(_request: httpx.Request, _body: dict[str, Any]) -> httpx.Response:
        return httpx.Response(200, content=gen(), headers={"content-type": "text/event-stream"})

    return respond


# --------------------------------------------------------------------------- the app


@dataclass
class Gateway:
    """One test's view of a running gateway: its own tenant and key, a fresh fake engine."""

    services: Services
    http: httpx.AsyncClient
    fake: FakeVLLM
    tenant_id: str
    auth: dict[str, str]
    tmp: Path

    @property
    def engine(self):  # type: ignore[no-untyped-def]
        return self.services.pool.engines[0]

    async def chat(self, **overrides: Any) -> httpx.Response:
        return await self.http.post("/v1/chat/completions", json={**CHAT, **overrides}, headers=self.auth)

    async def rows(self) -> list[Interaction]:
        """This tenant's interaction rows, oldest first."""
        await self.services.interactions.flush()
        with self.services.db.session() as s:
            rows = list(
                s.scalars(
                    select(Interaction).where(Interaction.tenant_id == self.tenant_id).order_by(Interaction.created_at)
                )
            )
            s.expunge_all()
        return rows

    def register(self, name: str, source: Path) -> VersionInfo:
        """Register `source` (an adapter or a full model) as the next version of `name`, served at once."""
        info = registry.register_dir(
            self.services.db,
            self.services.store,
            self.services.limits,
            tenant_id=self.tenant_id,
            name=name,
            source_dir=source,
            base_model_name=BASE,
            actor="test",
        )
        self.services.changed()
        return info

    def register_adapter(self, name: str = "helper") -> str:
        return self.register(name, write_tiny_adapter(self.tmp / f"src-{name}-{next(serial)}")).id


serial = itertools.count()


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base_dir = tmp_path / "tiny-llama"
    base_dir.mkdir(exist_ok=True)
    (base_dir / "config.json").write_text(json.dumps(TINY_CONFIG))
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    values: dict[str, Any] = dict(
        data_dir=data,
        # Explicit, so TAILOR_* variables of the developer's shell cannot redirect them.
        database_url=f"sqlite:///{(data / 'tailor.db').as_posix()}",
        adapter_store_url=str(data / "adapters"),
        blob_store_url=str(data / "blobs"),
        engine_urls=[ENGINE],
        admin_key="adm",
        run_trainer=False,
        auth_cache_ttl_s=0.0,
        base_model_name=BASE,
        base_model_path=base_dir,
        # The monitor checks once at start-up and then not again during a test, so a test
        # that marks the engine down sees it stay down.
        engine_health_interval_s=3600.0,
        log_flush_interval_s=60.0,
    )
    values.update(overrides)
    return Settings(**values)


@dataclass
class Running:
    app: FastAPI
    services: Services
    http: httpx.AsyncClient
    fake: FakeVLLM
    tmp: Path


@asynccontextmanager
async def running_gateway(
    tmp_path: Path, *, other_engines: dict[str, FakeVLLM] | None = None, **overrides: Any
) -> AsyncIterator[Running]:
    """The real app, in its lifespan, with the upstream client answered by a FakeVLLM (and
    requests to the URLs of `other_engines`, other base models' engines, by theirs)."""
    app = create_app(make_settings(tmp_path, **overrides), wait_for_engines=False)
    services: Services = app.state.services
    fake = FakeVLLM()
    others = other_engines or {}

    async def answer(request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        return await next((f for u, f in others.items() if url.startswith(u)), fake)(request)

    await services.client.aclose()
    # One client for both users of the upstream: the proxy and the pools (loads, health).
    services.client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    for pool in services.pools.values():
        pool.client = services.client
    async with app.router.lifespan_context(app):
        for engine in services.engines:
            engine.healthy = True
        # raise_app_exceptions=False: an unhandled error reaches the client as the bare 500
        # a real server would send, instead of surfacing inside the test.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
            yield Running(app, services, http, fake, tmp_path)


async def new_tenant(run: Running, name: str) -> tuple[str, dict[str, str]]:
    """A new tenant through the admin API: (its id, the headers of a key of its own)."""
    r = await run.http.post("/admin/tenants", json={"name": name}, headers=ADMIN)
    assert r.status_code == 201, r.text
    tenant_id = str(r.json()["id"])
    r = await run.http.post(f"/admin/tenants/{name}/keys", json={}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return tenant_id, {"authorization": f"Bearer {r.json()['key']}"}


async def tenant_view(run: Running, tmp_path: Path) -> AsyncIterator[Gateway]:
    """A fresh tenant and key on the shared gateway; engine and fake reset to a clean state."""
    run.fake.reset()
    for engine in run.services.pool.engines:
        engine.healthy, engine.restarting, engine.inflight, engine.background_inflight = True, False, 0, 0
        engine.takes_priority = True
        engine.users.clear()
        engine.resident.clear()
        engine.loading.clear()
    run.services.changed()
    # Random: gateways of several modules may share one database.
    tenant_id, auth = await new_tenant(run, f"t{secrets.token_hex(5)}")
    yield Gateway(run.services, run.http, run.fake, tenant_id, auth, tmp_path)
    # Every request gave its lease back, whatever happened to it.
    for engine in run.services.pool.engines:
        assert engine.inflight == engine.background_inflight == 0, engine
        assert engine.users == {}, engine
    # The gateway's own keys never travel to the engine (only the engine's own key may).
    assert all(s.authorization not in (auth["authorization"], ADMIN["authorization"]) for s in run.fake.seen)


# --------------------------------------------------------------------------- a tiny adapter


def write_tiny_adapter(directory: Path, r: int = 4, *, layers: int = LAYERS, made_for: str = "tiny-llama") -> Path:
    """A valid PEFT LoRA (q_proj, v_proj) for TINY_CONFIG (or its first `layers` layers, a base
    `made_for` names), written without torch."""
    directory.mkdir(parents=True)
    head_dim = HIDDEN // HEADS
    outs = {"q_proj": HEADS * head_dim, "v_proj": KV_HEADS * head_dim}
    tensors = {}
    for layer in range(layers):
        for module, fan_out in outs.items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = np.zeros((r, HIDDEN), dtype=np.float32)
            tensors[f"{prefix}.lora_B.weight"] = np.zeros((fan_out, r), dtype=np.float32)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    (directory / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "r": r,
                "lora_alpha": 2 * r,
                "target_modules": list(outs),
                "base_model_name_or_path": made_for,
                "bias": "none",
                "task_type": "CAUSAL_LM",
            }
        )
    )
    return directory


# --------------------------------------------------------------------------- helpers


def post_scope(path: str, headers: dict[str, str], *, client: str = "127.0.0.1") -> dict[str, Any]:
    """The ASGI scope uvicorn (spec 2.3) gives a POST to `path` on host gateway.test from `client`."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in {"host": "gateway.test", **headers}.items()],
        "client": (client, 50000),
        "server": ("gateway.test", 80),
        "state": {},
    }


def error_of(r: httpx.Response, status: int, *, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    validate(body, "ErrorResponse")
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]


def events(r: httpx.Response) -> list[str]:
    """The `data:` payloads of an SSE body, checking the framing is exactly `data: X\\n\\n`."""
    assert r.headers["content-type"].startswith("text/event-stream")
    text = r.text
    assert text.endswith("\n\n"), text[-200:]
    out = []
    for event in text[:-2].split("\n\n"):
        assert event.startswith("data: ") and "\n" not in event, repr(event)
        out.append(event[len("data: ") :])
    return out


def chunks(r: httpx.Response, schema: str = "CreateChatCompletionStreamResponse") -> list[dict[str, Any]]:
    payloads = events(r)
    assert payloads[-1] == "[DONE]"
    assert payloads.count("[DONE]") == 1
    out = []
    for payload in payloads[:-1]:
        chunk = json.loads(payload)
        validate(chunk, schema)
        out.append(chunk)
    return out
