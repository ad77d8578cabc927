"""OpenAI's stored chat completions (`/v1/chat/completions` GET, and per id), and a training
file built from them; the logic is gateway.stored_completions and gateway.stored_completions_file."""

from __future__ import annotations

import functools
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_serializer
from pydantic.functional_serializers import SerializerFunctionWrapHandler
from starlette.concurrency import run_in_threadpool

from core.quotas import Quotas
from gateway import stored_completions as sc
from gateway.deps import CallerDep, ServicesDep
from gateway.request_policy import Metadata
from gateway.routes.files import OpenAIFileOut, file_out
from gateway.stored_completions_file import create_training_file

router = APIRouter(prefix="/v1", tags=["stored completions"])

Limit = Query(20, ge=1, le=sc.MAX_PAGE, description="Items per page.")
OrderQuery = Query("asc", description="By creation time: `asc` (oldest first) or `desc`.")
After = Query(None, max_length=200, description="The last id of the previous page.")


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


class StoredMessageOut(BaseModel):
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


def message_out(m: sc.StoredMessage) -> StoredMessageOut:
    return StoredMessageOut(
        id=m.id,
        role=m.role,
        content=m.content,
        name=m.name,
        content_parts=m.content_parts,
        tool_calls=m.tool_calls,
        tool_call_id=m.tool_call_id,
    )


@router.get(
    "/chat/completions",
    response_model=ChatCompletionListOut,
    summary="List your stored chat completions (created with store: true); filter by model and metadata[key]=value",
)
def list_completions(
    request: Request,
    services: ServicesDep,
    caller: CallerDep,
    model: str | None = Query(None, max_length=256, description="Only completions of this model."),
    after: str | None = After,
    limit: int = Limit,
    order: Literal["asc", "desc"] = OrderQuery,
) -> ChatCompletionListOut:
    flt = sc.Filter(model=model, metadata=sc.metadata_filter(request.query_params.multi_items()))
    page = sc.list_completions(services.db, caller.tenant_id, flt, after=after, limit=limit, order=order)
    data = [completion_out(c) for c in page.items]
    first, last = sc.first_and_last([c.id for c in data])
    return ChatCompletionListOut(data=data, first_id=first, last_id=last, has_more=page.has_more)


@router.get(
    "/chat/completions/{completion_id}", response_model=ChatCompletionOut, summary="Retrieve a stored chat completion"
)
def get_completion(completion_id: str, services: ServicesDep, caller: CallerDep) -> ChatCompletionOut:
    return completion_out(sc.get_completion(services.db, caller.tenant_id, completion_id))


@router.get(
    "/chat/completions/{completion_id}/messages",
    response_model=MessageListOut,
    summary="The request messages of a stored chat completion, paginated",
)
def list_messages(
    completion_id: str,
    services: ServicesDep,
    caller: CallerDep,
    after: str | None = After,
    limit: int = Limit,
    order: Literal["asc", "desc"] = OrderQuery,
) -> MessageListOut:
    completion = sc.get_completion(services.db, caller.tenant_id, completion_id)
    page = sc.message_page(completion, after=after, limit=limit, order=order)
    data = [message_out(m) for m in page.items]
    first, last = sc.first_and_last([m.id for m in data])
    return MessageListOut(data=data, first_id=first, last_id=last, has_more=page.has_more)


@router.post(
    "/chat/completions/{completion_id}",
    response_model=ChatCompletionOut,
    summary="Replace the metadata of a stored chat completion (the only change allowed)",
)
def update_completion(
    completion_id: str, body: MetadataUpdate, services: ServicesDep, caller: CallerDep
) -> ChatCompletionOut:
    redact_all = services.settings.redact_pii
    updated = sc.update_metadata(services.db, caller.tenant_id, completion_id, body.metadata, redact_all=redact_all)
    return completion_out(updated)


@router.delete(
    "/chat/completions/{completion_id}",
    response_model=ChatCompletionDeletedOut,
    summary="Delete a stored chat completion: its messages, answer, metadata and feedback",
)
def delete_completion(completion_id: str, services: ServicesDep, caller: CallerDep) -> ChatCompletionDeletedOut:
    return ChatCompletionDeletedOut(id=sc.delete_completion(services.db, caller.tenant_id, completion_id))


@router.post(
    "/files/from_stored_completions",
    response_model=TrainingFileOut,
    summary="Create a fine-tune file of chat examples from your stored completions (filter: model, metadata)",
)
async def training_file(body: TrainingFileCreate, services: ServicesDep, caller: CallerDep) -> TrainingFileOut:
    create = functools.partial(
        create_training_file,
        services.db,
        services.blobs,
        caller.tenant_id,
        sc.Filter(model=body.model, metadata=body.metadata),
        filename=body.filename,
        quotas=Quotas.from_settings(services.settings),
    )
    made = await run_in_threadpool(create)
    return TrainingFileOut(**file_out(made.file).model_dump(), examples=made.examples, skipped=made.skipped)
