"""OpenAI's Responses API (`/v1/responses`); the logic is gateway.responses."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from core.errors import bad_request
from gateway.deps import CallerDep, ServicesDep
from gateway.protocol.responses import ResponseDeleted, ResponseItemList
from gateway.responses import create as responses
from gateway.responses import store
from gateway.responses.protocol import CreateResponseRequest
from gateway.stored_completions import MAX_PAGE, first_and_last

router = APIRouter(prefix="/v1", tags=["responses"])


def _no_include(include: list[str] | None) -> None:
    if include:
        raise bad_request("include is not supported by this gateway.", code="unsupported_parameter", param="include")


@router.post(
    "/responses",
    summary="Create a model response (text in, text or JSON out; streamed or not; continue with previous_response_id)",
    response_class=Response,
)
async def create_response(
    body: CreateResponseRequest, request: Request, services: ServicesDep, caller: CallerDep
) -> Response:
    return await responses.create(services, caller, body, request)


@router.get(
    "/responses/{response_id}",
    summary="Retrieve a stored response (created with store, the default)",
    response_class=JSONResponse,
)
def get_response(
    response_id: str,
    services: ServicesDep,
    caller: CallerDep,
    include: list[str] | None = Query(None, description="Not supported: must be left out."),
    stream: bool = Query(False, description="Not supported: a stored response is returned whole."),
) -> JSONResponse:
    _no_include(include)
    if stream:
        raise bad_request(
            "Streaming a stored response again is not offered; retrieve it whole.",
            code="unsupported_parameter",
            param="stream",
        )
    return JSONResponse(store.get(services.db, caller.tenant_id, response_id).body)


@router.delete(
    "/responses/{response_id}",
    response_model=ResponseDeleted,
    summary="Delete a stored response: its turn of the conversation, its log content and feedback",
)
async def delete_response(response_id: str, services: ServicesDep, caller: CallerDep) -> ResponseDeleted:
    # Its interaction row may still be queued: write it first, so that it is erased too.
    await services.interactions.flush()
    deleted = await run_in_threadpool(store.delete, services.db, caller.tenant_id, response_id)
    return ResponseDeleted(id=deleted)


@router.get(
    "/responses/{response_id}/input_items",
    response_model=ResponseItemList,
    summary="The items a stored response was generated from: earlier turns' input and output, then its own input",
)
def list_input_items(
    response_id: str,
    services: ServicesDep,
    caller: CallerDep,
    after: str | None = Query(None, max_length=200, description="The last item id of the previous page."),
    limit: int = Query(20, ge=1, le=MAX_PAGE, description="Items per page."),
    order: Literal["asc", "desc"] = Query("desc", description="`desc` (default: newest first) or `asc`."),
    include: list[str] | None = Query(None, description="Not supported: must be left out."),
) -> ResponseItemList:
    _no_include(include)
    items = store.items_used(services.db, caller.tenant_id, response_id)
    page = store.item_page(items, after=after, limit=limit, order=order)
    first, last = first_and_last([str(i["id"]) for i in page.items])
    return ResponseItemList(data=page.items, first_id=first, last_id=last, has_more=page.has_more)
