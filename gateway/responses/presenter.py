"""The engine's chat answer as a Response, or as the Responses API's stream of events.

Plugged into the chat path as its presenter (gateway.proxy.Presenter), so one request still
makes one engine call, one interaction record, one metering entry. A stream is:

    response.created, response.in_progress, response.output_item.added,
    response.content_part.added, response.output_text.delta (one per engine chunk with text),
    response.output_text.done, response.content_part.done, response.output_item.done,
    response.completed (or response.incomplete when the token budget ran out)

each with its `sequence_number`, framed as OpenAI frames them (`event:` and `data:` lines,
no `[DONE]`). A failure mid-stream ends it with an `error` event and `response.failed`. A
stored response is saved before its final event (or its body) is sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from gateway.responses import objects
from gateway.responses.items import item_id, output_message, output_text_part
from gateway.responses.objects import Echo, Outcome

JSON = dict[str, Any]
Saver = Callable[[JSON], Awaitable[None]]


class ResponsePresenter:
    def __init__(self, rid: str, created_at: int, echo: Echo, save: Saver | None, clock: Callable[[], float]) -> None:
        self.rid = rid
        self.created_at = created_at
        self.echo = echo
        self.save = save
        self.clock = clock
        self.mid = item_id()
        self.sequence = 0
        self.parts: list[str] = []
        self.outcome = Outcome()

    # ------------------------------------------------------------------ whole bodies

    async def body(self, chat: JSON) -> JSON:
        return await self._finish(objects.outcome_of(chat))

    async def _finish(self, outcome: Outcome) -> JSON:
        body = objects.finished(self.rid, self.created_at, int(self.clock()), self.echo, self.mid, outcome)
        if self.save is not None:
            await self.save(body)
        return body

    # ------------------------------------------------------------------ streams

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _location(self) -> JSON:
        return {"item_id": self.mid, "output_index": 0, "content_index": 0}

    def _shell(self, status: str, error: JSON | None = None) -> JSON:
        return objects.response(self.rid, self.created_at, self.echo, status=status, output=[], error=error)

    def opening(self) -> bytes:
        shell = self._shell("in_progress")
        return b"".join(
            (
                self._event("response.created", response=shell),
                self._event("response.in_progress", response=shell),
                self._event(
                    "response.output_item.added", output_index=0, item=output_message([], self.mid, "in_progress")
                ),
                self._event("response.content_part.added", **self._location(), part=output_text_part("")),
            )
        )

    def chunk(self, chunk: JSON) -> bytes:
        if chunk.get("usage"):
            self.outcome.usage = chunk["usage"]
        out = b""
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            text = (choice.get("delta") or {}).get("content")
            if isinstance(text, str) and text:
                self.parts.append(text)
                out += self._event("response.output_text.delta", **self._location(), delta=text, logprobs=[])
            if choice.get("finish_reason"):
                self.outcome.finish_reason = choice["finish_reason"]
        return out

    async def closing(self) -> bytes:
        self.outcome.text = "".join(self.parts)
        body = await self._finish(self.outcome)
        item = body["output"][0]
        final = "response.incomplete" if body["status"] == "incomplete" else "response.completed"
        return b"".join(
            (
                self._event("response.output_text.done", **self._location(), text=self.outcome.text, logprobs=[]),
                self._event("response.content_part.done", **self._location(), part=item["content"][0]),
                self._event("response.output_item.done", output_index=0, item=item),
                self._event(final, response=body),
            )
        )

    def failure(self, error: JSON) -> bytes:
        err = error.get("error") if isinstance(error.get("error"), dict) else {}
        message = str(err.get("message") or "The answer could not be completed.")
        code, param = err.get("code"), err.get("param")
        failed = self._shell("failed", {"code": "server_error", "message": message})
        return self._event(
            "error",
            code=code if isinstance(code, str) else None,
            message=message,
            param=param if isinstance(param, str) else None,
        ) + self._event("response.failed", response=failed)
