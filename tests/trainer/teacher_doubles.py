"""A remote teacher as the distillation tests drive it: on httpx's MockTransport (or a real
server on loopback), with the backoff's sleeps recorded instead of slept."""

from __future__ import annotations

from typing import Any

import httpx

from core.outbound import OutboundPolicy
from trainer.distill import RemoteTeacher

USER = {"role": "user", "content": "Where is my parcel?"}
LOOPBACK_ALLOWED = OutboundPolicy(allow_http=True, allow_hosts=frozenset({"127.0.0.1"}))


def completion(text: str | None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


def teacher(handler: Any, sleeps: list[float] | None = None, **kw: Any) -> RemoteTeacher:
    return RemoteTeacher(
        base_url=kw.pop("base_url", "https://teacher.example/v1"),
        api_key=kw.pop("api_key", "sk-t"),
        model="big-model",
        max_tokens=16,
        concurrency=kw.pop("concurrency", 2),
        policy=kw.pop("policy", OutboundPolicy()),
        transport=httpx.MockTransport(handler) if handler is not None else None,
        sleep=(sleeps if sleeps is not None else []).append,
        **kw,
    )
