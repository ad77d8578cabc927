"""Requests as the proxy hands them to the interaction log, for tests of what is stored."""

from __future__ import annotations

from typing import Any

from gateway.interaction_log import InteractionRecord


def chat_record(record_id: str, tenant_id: str, **fields: Any) -> InteractionRecord:
    """A chat completion on the base model through key `key-1`, unless `fields` say otherwise."""
    defaults: dict[str, Any] = {"api_key_id": "key-1", "endpoint": "chat.completions", "model": "base"}
    return InteractionRecord(id=record_id, tenant_id=tenant_id, **{**defaults, **fields})
