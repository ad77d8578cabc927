"""One running gateway (tests.gateway.gateway_world.running_gateway) per test module, as a
module-scoped fixture: assign `module_gateway(...)` to a module's `shared`, and
tests/gateway/conftest.py gives each test its own tenant of it (`gw`, `other`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.gateway.gateway_world import Running, running_gateway


def module_gateway(directory: str, **overrides: Any) -> Any:
    """A module-scoped `shared` fixture: one running gateway for all of a module's tests, as
    building and migrating one costs ~0.15 s; each test gets its own tenant of it (tests/gateway/
    conftest.py), so rows and adapter names never collide. Assign it to a module's `shared`."""

    @pytest_asyncio.fixture(scope="module", loop_scope="module")
    async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
        async with running_gateway(tmp_path_factory.mktemp(directory), **overrides) as run:
            yield run

    return shared


def gateway_beside_shared(directory: str, **overrides: Any) -> Any:
    """A second module-scoped gateway with other settings, on the database of the module's
    `shared`: migrating a second one would double the module's set-up time."""

    @pytest_asyncio.fixture(scope="module", loop_scope="module")
    async def beside(tmp_path_factory: pytest.TempPathFactory, shared: Running) -> AsyncIterator[Running]:
        database_url = shared.services.settings.database_url
        async with running_gateway(tmp_path_factory.mktemp(directory), database_url=database_url, **overrides) as run:
            yield run

    return beside
