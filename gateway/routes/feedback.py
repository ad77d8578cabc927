"""Feedback on served answers (`/v1/feedback`): one at a time, or a JSONL import."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Query, Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from core.errors import TailorError, bad_request
from core.models import Tenant
from gateway.deps import CallerDep, ServicesDep
from gateway.protocol.feedback import FeedbackCreate, FeedbackImported, FeedbackList, FeedbackOut
from gateway.protocol.wire import page_ids
from gateway.redaction import redact_text
from gateway.services import Services
from trainer import feedback
from trainer.feedback import Redactor

router = APIRouter(prefix="/v1", tags=["feedback"])

# Raw-body imports are accepted under the JSON Lines media types in use.
JSONL_TYPES = (
    "application/jsonl",
    "application/x-ndjson",
    "application/x-jsonlines",
    "application/json-lines",
    "text/jsonl",
)


def _redactor(services: Services, tenant_id: str) -> Redactor | None:
    """Personal data is redacted from stored feedback text when the tenant (or the whole
    gateway, setting redact_pii) asked for it; reads the database, so call it in a thread."""
    if services.settings.redact_pii:
        return redact_text
    with services.db.session() as s:
        wanted = s.scalar(select(Tenant.redact_pii).where(Tenant.id == tenant_id))
    return redact_text if wanted else None


@router.post(
    "/feedback",
    response_model=FeedbackOut,
    status_code=201,
    summary="Rate, correct or prefer an answer the gateway served",
)
async def create_feedback(body: FeedbackCreate, services: ServicesDep, caller: CallerDep) -> FeedbackOut:
    redact = await run_in_threadpool(_redactor, services, caller.tenant_id)
    record = partial(feedback.record_feedback, services.db, caller.tenant_id, redact=redact, **body.model_dump())
    try:
        info = await run_in_threadpool(record)
    except TailorError as exc:
        if exc.code != "interaction_not_found":
            raise
        # The log is written off the hot path: feedback sent right after the response can
        # arrive before its interaction row. Write what is queued, then look again.
        await services.interactions.flush()
        info = await run_in_threadpool(record)
    return FeedbackOut.model_validate(info)


_IMPORT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            "application/jsonl": {"schema": {"type": "string"}},
        },
    }
}


async def _read_import(request: Request) -> bytes:
    limit = feedback.MAX_IMPORT_BYTES
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type == "multipart/form-data":
        async with request.form(max_files=1, max_fields=10) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise bad_request("Send the JSONL as the multipart field 'file'.", param="file")
            data = bytearray()
            while chunk := await upload.read(1 << 20):
                data += chunk
                if len(data) > limit:
                    raise TailorError(413, f"Import exceeds {limit} bytes.", code="file_too_large", param="file")
            return bytes(data)
    if content_type in JSONL_TYPES:
        # Raw bodies are capped by the gateway's JSON body limit; multipart takes more.
        return await request.body()
    raise TailorError(
        415,
        "Send feedback JSONL as multipart/form-data (field 'file') or as a raw body "
        f"with content-type {JSONL_TYPES[0]}.",
        code="unsupported_media_type",
        param="file",
    )


@router.post(
    "/feedback/import",
    response_model=FeedbackImported,
    status_code=201,
    openapi_extra=_IMPORT_BODY,
    summary="Import feedback from JSONL; one bad line refuses the whole import",
)
async def import_feedback(request: Request, services: ServicesDep, caller: CallerDep) -> FeedbackImported:
    data = await _read_import(request)
    redact = await run_in_threadpool(_redactor, services, caller.tenant_id)
    result = await run_in_threadpool(
        partial(feedback.import_feedback_jsonl, services.db, caller.tenant_id, data, redact=redact)
    )
    return FeedbackImported(imported=result.imported, ids=list(result.ids))


@router.get("/feedback", response_model=FeedbackList, summary="Your feedback, newest first")
def list_feedback(
    services: ServicesDep,
    caller: CallerDep,
    limit: int = Query(100, ge=1, le=feedback.MAX_LIST_LIMIT),
    after: str | None = Query(None, description="Last id of the previous page."),
) -> FeedbackList:
    page = feedback.list_feedback(services.db, caller.tenant_id, limit=limit, after=after)
    data = [FeedbackOut.model_validate(i) for i in page.items]
    return FeedbackList(data=data, **page_ids(data), has_more=page.has_more)
