"""OpenAI's model objects (`/v1/models`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    # Only on a page asked for with `after` or `limit` (the ids only when it has entries);
    # a plain listing is OpenAI's bare list.
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool | None = None


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool
