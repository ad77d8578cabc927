"""Feedback on served answers (`/v1/feedback`): one at a time, or a JSONL import."""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from core.errors import TailorError, bad_request
from core.models import Tenant
from gateway.deps import CallerDep, ServicesDep
from gateway.redaction import redact_text
from gateway.services import Services
from trainer import feedback
from trainer.feedback import FeedbackInfo, Redactor

router = APIRouter(prefix="/v1", tags=["feedback"])

# Raw-body imports are accepted under the JSON Lines media types in use.
JSONL_TYPES = (
    "application/jsonl",
    "application/x-ndjson",
    "application/x-jsonlines",
    "application/json-lines",
    "text/jsonl",
)


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


class FeedbackOut(BaseModel):
    id: str
    object: Literal["feedback"] = "feedback"
    interaction_id: str | None
    adapter_version_id: str | None
    model: str | None
    rating: str | None
    score: float | None
    correction: str | None
    preferred: str | None
    rejected: str | None
    messages: list[dict[str, str]] | None
    source: str
    created_at: int


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


def feedback_out(info: FeedbackInfo) -> FeedbackOut:
    return FeedbackOut(
        id=info.id,
        interaction_id=info.interaction_id,
        adapter_version_id=info.adapter_version_id,
        model=info.model,
        rating=info.rating,
        score=info.score,
        correction=info.correction,
        preferred=info.preferred,
        rejected=info.rejected,
        messages=[dict(m) for m in info.messages] if info.messages else None,
        source=info.source,
        created_at=int(info.created_at.timestamp()),
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
    return feedback_out(info)


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
    data = [feedback_out(i) for i in page.items]
    return FeedbackList(
        data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=page.has_more
    )
