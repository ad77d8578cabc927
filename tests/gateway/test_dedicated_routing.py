"""The proxy's lease provider: a name that resolves to a full-model version is served by that
version's own engine (a fake launcher's here), with the client seeing only its own names."""

from __future__ import annotations

import asyncio
import json

import pytest

from adapters.dedicated import Running as Started
from adapters.engine_checks import EngineExpectation
from adapters.engines import Engine, EnginePool
from tests.adapters.test_model_validation import write_model
from tests.gateway.gateway_world import Gateway
from tests.gateway.module_gateway import module_gateway
from tests.openai_schema import validate

DEDICATED = "http://dedicated.test"
pytestmark = pytest.mark.asyncio(loop_scope="module")


shared = module_gateway("dedicated", cold_start_wait_s=0.2)


class Launcher:
    """Starts the "engine" of a model as a healthy entry on the fake vLLM, once `gate` opens."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.gate = asyncio.Event()
        self.gate.set()
        self.started: list[str] = []

    def owns(self, digest: str) -> bool:
        return True

    async def start(self, digest: str) -> Started:
        self.started.append(digest)
        await self.gate.wait()
        self.gw.fake.loras[digest] = "served by its own engine"  # the fake answers names it knows
        engine = Engine(url=DEDICATED, healthy=True)
        pool = EnginePool([engine], self.gw.services.client, expect=EngineExpectation(digest, 0), max_resident=1)

        async def stop() -> None:
            pass

        return Started(pool, stop)


def _register_model(gw: Gateway, name: str) -> str:
    return gw.register(name, write_model(gw.tmp / f"model-{name}")).digest


@pytest.fixture
def launcher(gw: Gateway) -> Launcher:
    fake = Launcher(gw)
    gw.services.dedicated.launcher = fake
    return fake


async def test_a_full_model_is_served_by_its_own_engine(gw: Gateway, launcher: Launcher) -> None:
    digest = _register_model(gw, "student")
    r = await gw.chat(model="student")
    assert r.status_code == 200, r.text
    validate(r.json(), "CreateChatCompletionResponse")
    assert r.json()["model"] == "student" and digest not in r.text
    r = await gw.chat(model="student", stream=True)
    assert r.status_code == 200 and digest not in r.text
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    for event in events:
        validate(event, "CreateChatCompletionStreamResponse")
    # The engine got the checkpoint's own name, nothing was loaded as an adapter, and every
    # lease went back.
    assert [s.body["model"] for s in gw.fake.completions()] == [digest, digest]
    assert gw.fake.loads() == [] and launcher.started == [digest]
    assert {row.engine for row in await gw.rows()} == {DEDICATED}
    assert gw.services.dedicated.stats()[0]["inflight"] == 0 and gw.engine.inflight == 0
    await gw.services.dedicated.close()


async def test_a_cold_start_is_a_503_with_retry_after(gw: Gateway, other: Gateway, launcher: Launcher) -> None:
    launcher.gate.clear()
    _register_model(gw, "slow")
    r = await gw.chat(model="slow")
    assert r.status_code == 503, r.text
    validate(r.json(), "ErrorResponse")
    assert r.json()["error"]["code"] == "model_starting" and int(r.headers["retry-after"]) >= 1
    rows = await gw.rows()
    assert rows[-1].status_code == 503
    # Another tenant cannot reach (or start) it.
    r = await other.chat(model="slow@v1")
    assert r.status_code == 404 and len(launcher.started) == 1
    launcher.gate.set()
    await asyncio.sleep(0.05)
    assert (await gw.chat(model="slow@v1")).status_code == 200
    await gw.services.dedicated.close()
