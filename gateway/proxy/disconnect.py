"""Noticing that the client went away, so that the engine's work for it is cancelled."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request


class ClientDisconnected(Exception):
    """The client went away before its answer was complete."""


async def until_disconnect(request: Request, coro: Any) -> Any:
    """Await `coro`, cancelling it (and so the engine's work) if the client goes away."""
    task = asyncio.ensure_future(coro)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientDisconnected
    finally:
        watcher.cancel()


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
