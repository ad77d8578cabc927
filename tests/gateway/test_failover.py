"""A request whose engine went away since its last health check goes to another engine.

Two fake engines serve the base model; the first refuses or drops the connection before it
answers: the request is answered by the second, and the first is marked down. A timeout is
not retried (that engine may still be working on it)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select

from core.models import Interaction
from tests.gateway.gateway_world import BASE, ENGINE, FakeVLLM, Running, error_of, new_tenant, running_gateway

pytestmark = pytest.mark.asyncio(loop_scope="module")

SECOND = "http://second-engine.test"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def run(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    second = FakeVLLM()
    tmp = tmp_path_factory.mktemp("failover")
    async with running_gateway(tmp, other_engines={SECOND: second}, engine_urls=[ENGINE, SECOND]) as running:
        _, running.auth = await new_tenant(running, "acme")  # type: ignore[attr-defined]
        running.second = second  # type: ignore[attr-defined]
        yield running


def _both_healthy(run: Running) -> None:
    for engine in run.services.pool.engines:
        engine.healthy = True


async def _chat(run: Running) -> httpx.Response:
    body = {"model": BASE, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    return await run.http.post("/v1/chat/completions", json=body, headers=run.auth)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("connection refused"),
        httpx.ConnectTimeout("no connection"),
        httpx.RemoteProtocolError("Server disconnected without a response"),
    ],
)
async def test_a_connection_that_fails_before_an_answer_goes_to_another_engine(
    run: Running, failure: Exception
) -> None:
    _both_healthy(run)
    first, second = run.services.pool.engines
    first.inflight = 0
    second.inflight = 1  # the pool picks the least busy: the first engine
    before = len(run.second.completions())  # type: ignore[attr-defined]
    run.fake.script.append(failure)
    r = await _chat(run)
    second.inflight = 0
    assert r.status_code == 200, r.text
    assert len(run.second.completions()) == before + 1  # type: ignore[attr-defined]
    assert first.healthy is False and second.healthy is True
    await run.services.interactions.flush()
    with run.services.db.session() as s:
        last = s.scalars(select(Interaction).order_by(Interaction.created_at.desc()).limit(1)).one()
        assert (last.engine, last.status_code) == (SECOND, 200)


async def test_a_timeout_is_not_sent_twice(run: Running) -> None:
    _both_healthy(run)
    first, second = run.services.pool.engines
    second.inflight = 1
    before = len(run.second.completions())  # type: ignore[attr-defined]
    run.fake.script.append(httpx.ReadTimeout("the engine took too long"))
    r = await _chat(run)
    second.inflight = 0
    assert error_of(r, 503)["code"] == "engine_unavailable"
    assert len(run.second.completions()) == before
