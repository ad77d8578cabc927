"""Tenant views onto a module's running gateway: a module that defines `shared` (a Running
gateway from tests.gateway.gateway_world.running_gateway) gets `gw` and `other`, two tenants
of it, each with its own key and nothing else in common."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from tests.gateway.gateway_world import Gateway, Running, tenant_view


@pytest_asyncio.fixture(loop_scope="module")
async def gw(shared: Running, tmp_path: Path) -> AsyncIterator[Gateway]:
    async for g in tenant_view(shared, tmp_path):
        yield g


@pytest_asyncio.fixture(loop_scope="module")
async def other(shared: Running, tmp_path: Path) -> AsyncIterator[Gateway]:
    async for g in tenant_view(shared, tmp_path):
        yield g
