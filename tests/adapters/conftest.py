"""The fake engines of tests.adapters.engine_world, as fixtures: `fake` answers for every
engine URL, `client` sends to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.adapters.engine_world import FakeVLLM


@pytest.fixture
def fake() -> FakeVLLM:
    return FakeVLLM()


@pytest.fixture
async def client(fake: FakeVLLM) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake)) as c:
        yield c
