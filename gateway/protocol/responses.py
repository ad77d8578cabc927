"""What `/v1/responses` answers besides a Response itself (gateway.responses builds those)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class ResponseItemList(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str
    last_id: str
    has_more: bool
