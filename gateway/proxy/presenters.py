"""How a normalised answer reaches the client: as it is, or as another API's objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson


class Presenter(Protocol):
    """How a normalised answer reaches the client.

    Chat and text completions go out as they are (`Passthrough`); the Responses API
    (gateway.responses) sends the same engine answer as its own objects and events. A stream
    calls `opening` once, `chunk` per normalised chunk, then `closing` at the engine's
    `[DONE]` or `failure` instead when it fails; what each returns is sent as it is.
    """

    async def body(self, body: dict[str, Any]) -> dict[str, Any]: ...
    def opening(self) -> bytes: ...
    def chunk(self, chunk: dict[str, Any]) -> bytes: ...
    async def closing(self) -> bytes: ...
    def failure(self, error: dict[str, Any]) -> bytes: ...


def _sse(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


@dataclass
class Passthrough:
    """OpenAI's chat and completions objects, as normalised; server-sent `data:` events."""

    wants_usage: bool = False  # the client asked for the usage chunk (`stream_options`)

    async def body(self, body: dict[str, Any]) -> dict[str, Any]:
        return body

    def opening(self) -> bytes:
        return b""

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        # Tailor always asks the engine for usage; the client gets that chunk only if it asked.
        if not chunk.get("choices") and chunk.get("usage") and not self.wants_usage:
            return b""
        return _sse(chunk)

    async def closing(self) -> bytes:
        return b"data: [DONE]\n\n"

    def failure(self, error: dict[str, Any]) -> bytes:
        return _sse(error)
