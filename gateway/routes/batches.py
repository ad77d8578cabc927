"""OpenAI's Batch API (`/v1/batches`); the logic is gateway.batches."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from core.errors import bad_request
from gateway.batches import store
from gateway.batches.store import BatchInfo, NewBatch
from gateway.deps import CallerDep, ServicesDep
from gateway.request_policy import Metadata

router = APIRouter(prefix="/v1/batches", tags=["batches"])


class CreateBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: Metadata | None = None
    # OpenAI's expiry of the output files: refused with a 400 (Tailor keeps files until deleted).
    output_expires_after: dict[str, Any] | None = None


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class InputTokensDetails(BaseModel):
    cached_tokens: int


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int


class BatchUsage(BaseModel):
    """The tokens of the batch's answered requests so far."""

    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]


class BatchObject(BaseModel):
    """OpenAI's `Batch`; fields without a value are left out (its schema has no nulls for them)."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None = None
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    usage: BatchUsage
    metadata: dict[str, str] | None = None


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


def _unix(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def batch_object(b: BatchInfo) -> BatchObject:
    return BatchObject(
        id=b.id,
        endpoint=b.endpoint,
        model=b.model,
        errors=BatchErrors(data=b.errors) if b.errors else None,
        input_file_id=b.input_file_id,
        completion_window=b.completion_window,
        status=b.status,
        output_file_id=b.output_file_id,
        error_file_id=b.error_file_id,
        created_at=int(b.created_at.timestamp()),
        in_progress_at=_unix(b.in_progress_at),
        expires_at=_unix(b.expires_at),
        finalizing_at=_unix(b.finalizing_at),
        completed_at=_unix(b.completed_at),
        failed_at=_unix(b.failed_at),
        expired_at=_unix(b.expired_at),
        cancelling_at=_unix(b.cancelling_at),
        cancelled_at=_unix(b.cancelled_at),
        request_counts=RequestCounts(total=b.total, completed=b.completed, failed=b.failed),
        usage=BatchUsage.model_validate(b.tokens.usage()),
        metadata=b.metadata,
    )


@router.post(
    "",
    response_model=BatchObject,
    response_model_exclude_none=True,
    summary="Create a batch from an uploaded file of requests (purpose batch); it runs in the background",
)
async def create_batch(body: CreateBatchRequest, services: ServicesDep, caller: CallerDep) -> BatchObject:
    if body.output_expires_after is not None:
        raise bad_request(
            "output_expires_after is not supported: a batch's output files are kept until you delete them.",
            code="unsupported_parameter",
            param="output_expires_after",
        )
    new = NewBatch(body.input_file_id, body.endpoint, body.completion_window, body.metadata)
    settings = services.settings
    created = await run_in_threadpool(
        store.create,
        services.db,
        services.blobs,
        caller.tenant_id,
        caller.key_id,
        new,
        base_model=settings.base_model_name,
        max_lines=settings.batch_max_lines,
    )
    return batch_object(created)


@router.get("", response_model=BatchList, response_model_exclude_none=True, summary="List your batches, newest first")
def list_batches(
    services: ServicesDep,
    caller: CallerDep,
    after: str | None = Query(None, max_length=200, description="The last batch id of the previous page."),
    limit: int = Query(20, ge=1, le=store.MAX_PAGE, description="Batches per page."),
) -> BatchList:
    page = store.list_batches(services.db, caller.tenant_id, after=after, limit=limit)
    data = [batch_object(b) for b in page.items]
    return BatchList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=page.has_more,
    )


@router.get(
    "/{batch_id}",
    response_model=BatchObject,
    response_model_exclude_none=True,
    summary="Retrieve a batch: its status, request counts and output files",
)
def get_batch(batch_id: str, services: ServicesDep, caller: CallerDep) -> BatchObject:
    return batch_object(store.get(services.db, caller.tenant_id, batch_id))


@router.post(
    "/{batch_id}/cancel",
    response_model=BatchObject,
    response_model_exclude_none=True,
    summary="Cancel a batch: no new requests start; those running finish and their output is kept",
)
def cancel_batch(batch_id: str, services: ServicesDep, caller: CallerDep) -> BatchObject:
    return batch_object(store.cancel(services.db, caller.tenant_id, batch_id))
