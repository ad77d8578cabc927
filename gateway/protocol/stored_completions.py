"""OpenAI's stored chat completions (`/v1/chat/completions` GET, and per id), and the
training file built from them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer
from pydantic.functional_serializers import SerializerFunctionWrapHandler

from gateway import stored_completions as sc
from gateway.protocol.files import OpenAIFileOut
from gateway.protocol.wire import WireModel
from gateway.request_policy import Metadata


def _without_none(handler: SerializerFunctionWrapHandler, value: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    # Optional keys OpenAI's schema has no null for are left out rather than sent as null.
    out: dict[str, Any] = handler(value)
    return {k: v for k, v in out.items() if not (k in keys and v is None)}


class AnswerMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None


class Choice(BaseModel):
    index: int = 0
    message: AnswerMessage
    finish_reason: str
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionOut(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    metadata: dict[str, str]

    @model_serializer(mode="wrap")
    def _drop_unknown_usage(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_none(handler, self, ("usage",))


class ChatCompletionListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[ChatCompletionOut]
    first_id: str
    last_id: str
    has_more: bool


# model_validate(gateway.stored_completions.StoredMessage)
class StoredMessageOut(WireModel):
    id: str
    role: str
    content: str | None
    refusal: None = None
    name: str | None = None
    content_parts: list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @model_serializer(mode="wrap")
    def _drop_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_none(handler, self, ("tool_calls", "tool_call_id"))


class MessageListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[StoredMessageOut]
    first_id: str
    last_id: str
    has_more: bool


class ChatCompletionDeletedOut(BaseModel):
    object: Literal["chat.completion.deleted"] = "chat.completion.deleted"
    id: str
    deleted: bool = True


class MetadataUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metadata: Metadata | None = Field(description="Replaces the stored metadata; null removes it.")


class TrainingFileCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, max_length=256, description="Only completions of this model.")
    metadata: Metadata | None = Field(None, description="Only completions carrying every one of these pairs.")
    filename: str | None = Field(None, max_length=255)


class TrainingFileOut(OpenAIFileOut):
    examples: int = Field(description="Chat examples in the file (lines).")
    skipped: int = Field(description="Matching stored completions that make no example (see the README).")


def completion_out(c: sc.StoredCompletion) -> ChatCompletionOut:
    """A stored completion as OpenAI's `ChatCompletion`: one choice, usage only where both counts are known."""
    usage = None
    if c.prompt_tokens is not None and c.completion_tokens is not None:
        usage = Usage(
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            total_tokens=c.prompt_tokens + c.completion_tokens,
        )
    choice = Choice(message=AnswerMessage(content=c.answer), finish_reason=c.finish_reason or "stop")
    return ChatCompletionOut(
        id=c.id, created=c.created, model=c.model, choices=[choice], usage=usage, metadata=c.metadata
    )
