"""OpenAI's stored chat completions (`/v1/chat/completions` GET, and per id), and a training
file built from them; the logic is gateway.stored_completions and gateway.stored_completions_file."""

from __future__ import annotations

import functools
from typing import Literal

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from core.quotas import Quotas
from gateway import stored_completions as sc
from gateway.deps import CallerDep, ServicesDep
from gateway.protocol.stored_completions import (
    ChatCompletionDeletedOut,
    ChatCompletionListOut,
    ChatCompletionOut,
    MessageListOut,
    MetadataUpdate,
    StoredMessageOut,
    TrainingFileCreate,
    TrainingFileOut,
    completion_out,
)
from gateway.protocol.wire import attributes
from gateway.stored_completions_file import create_training_file

router = APIRouter(prefix="/v1", tags=["stored completions"])

Limit = Query(20, ge=1, le=sc.MAX_PAGE, description="Items per page.")
OrderQuery = Query("asc", description="By creation time: `asc` (oldest first) or `desc`.")
After = Query(None, max_length=200, description="The last id of the previous page.")


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
    data = [StoredMessageOut.model_validate(m) for m in page.items]
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
    return TrainingFileOut.model_validate({**attributes(made.file), "examples": made.examples, "skipped": made.skipped})
