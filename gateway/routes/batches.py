"""OpenAI's Batch API (`/v1/batches`); the logic is gateway.batches."""

from __future__ import annotations

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from core.errors import bad_request
from gateway.batches import store
from gateway.batches.store import NewBatch
from gateway.deps import CallerDep, ServicesDep
from gateway.protocol.batches import BatchList, BatchObject, CreateBatchRequest, batch_object
from gateway.protocol.wire import page_ids

router = APIRouter(prefix="/v1/batches", tags=["batches"])


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
    return BatchList(data=data, **page_ids(data), has_more=page.has_more)


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
