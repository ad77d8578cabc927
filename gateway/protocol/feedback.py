"""Feedback on served answers (`/v1/feedback`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from gateway.protocol.wire import UnixTime, wire_model
from trainer.feedback import FeedbackInfo


class FeedbackCreate(BaseModel):
    # forbid: a misspelt field ("raiting") is refused instead of silently dropped.
    model_config = ConfigDict(extra="forbid")

    interaction_id: str = Field(
        min_length=1,
        max_length=64,
        description="The rated answer's completion or response `id` (its `x-tailor-interaction-id` header).",
    )
    rating: Literal["good", "bad"] | None = None
    score: float | None = Field(None, ge=0, le=1, description="0 (worst) to 1 (best).")
    correction: str | None = Field(None, description="The answer that should have been given.")
    preferred: str | None = Field(None, description="A better answer; alone: better than the logged one.")
    rejected: str | None = Field(None, description="The worse answer of an explicit pair (needs preferred).")


def _none_when_empty(value: Any) -> Any:
    # Feedback without a conversation shows null, not an empty list.
    return [dict(m) for m in value] if value else None


FeedbackOut = wire_model(
    "FeedbackOut",
    FeedbackInfo,
    lead=("id",),
    object=(Literal["feedback"], "feedback"),
    messages=Annotated[list[dict[str, str]] | None, BeforeValidator(_none_when_empty)],
    created_at=UnixTime,
)


class FeedbackList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FeedbackOut]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FeedbackImported(BaseModel):
    object: Literal["feedback.import"] = "feedback.import"
    imported: int
    ids: list[str]
