"""OpenAI's Files API (`/v1/files`): fine-tuning files, batch input files and batch output
files (gateway.batches); shapes follow OpenAI's schema."""

from __future__ import annotations

import functools
from typing import Literal
from urllib.parse import quote

from fastapi import APIRouter, File, Form, Query, UploadFile
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from core.errors import TailorError, bad_request
from core.quotas import Quotas
from gateway.batches import input_file
from gateway.deps import CallerDep, ServicesDep
from gateway.protocol.files import DeleteFileOut, ListFilesOut, OpenAIFileOut
from trainer import files

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.post(
    "",
    response_model=OpenAIFileOut,
    summary="Upload a JSONL file: fine-tuning examples (purpose fine-tune) or a batch's requests (purpose batch), "
    "validated line by line",
)
async def upload(
    services: ServicesDep, caller: CallerDep, file: UploadFile = File(...), purpose: str = Form(...)
) -> OpenAIFileOut:
    limit = files.MAX_FILE_BYTES
    data = bytearray()
    while chunk := await file.read(1 << 20):
        data += chunk
        if len(data) > limit:
            raise TailorError(413, f"File exceeds {limit} bytes.", code="file_too_large", param="file")
    settings = services.settings
    quotas = Quotas.from_settings(settings)
    if purpose == input_file.PURPOSE:
        store = functools.partial(
            input_file.upload, base_model=settings.base_model_name, max_lines=settings.batch_max_lines, quotas=quotas
        )
    elif purpose == files.PURPOSE:
        store = functools.partial(files.upload_file, purpose=purpose, quotas=quotas)
    else:
        raise bad_request(
            f"purpose must be {files.PURPOSE!r} or {input_file.PURPOSE!r} (got {purpose!r}).",
            code="invalid_purpose",
            param="purpose",
        )
    info = await run_in_threadpool(store, services.db, services.blobs, caller.tenant_id, file.filename, bytes(data))
    return OpenAIFileOut.model_validate(info)


@router.get("", response_model=ListFilesOut)
def list_files(
    services: ServicesDep,
    caller: CallerDep,
    purpose: str | None = None,
    limit: int = Query(10_000, ge=1, le=10_000),
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> ListFilesOut:
    page = files.list_files(services.db, caller.tenant_id, purpose=purpose, limit=limit, order=order, after=after)
    data = [OpenAIFileOut.model_validate(i) for i in page.items]
    return ListFilesOut(
        data=data, first_id=data[0].id if data else "", last_id=data[-1].id if data else "", has_more=page.has_more
    )


@router.get("/{file_id}", response_model=OpenAIFileOut)
def get_file(file_id: str, services: ServicesDep, caller: CallerDep) -> OpenAIFileOut:
    return OpenAIFileOut.model_validate(files.get_file(services.db, caller.tenant_id, file_id))


@router.delete("/{file_id}", response_model=DeleteFileOut)
def delete_file(file_id: str, services: ServicesDep, caller: CallerDep) -> DeleteFileOut:
    info = files.delete_file(services.db, services.blobs, caller.tenant_id, file_id)
    return DeleteFileOut(id=info.id, deleted=True)


@router.get(
    "/{file_id}/content", response_class=Response, responses={200: {"content": {"application/octet-stream": {}}}}
)
def file_content(file_id: str, services: ServicesDep, caller: CallerDep) -> Response:
    info = files.get_file(services.db, caller.tenant_id, file_id)
    data = files.file_content(services.db, services.blobs, caller.tenant_id, file_id)
    # Headers are latin-1: an ASCII fallback name plus the exact name per RFC 6266/5987.
    fallback = "".join(c if c.isascii() and c not in '"\\' else "_" for c in info.filename)
    disposition = f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(info.filename, safe='')}"
    return Response(data, media_type="application/octet-stream", headers={"content-disposition": disposition})
