"""Training files (purpose "fine-tune"): checked when uploaded, and read back as examples."""

from __future__ import annotations

from core.blobs import BlobStore
from core.db import Database
from core.errors import TailorError, bad_request
from core.quotas import Quotas, operator_quotas
from trainer.files.parsing import parse_jsonl
from trainer.files.store import FileInfo, file_content, save_file
from trainer.records import PreferenceRecord, PromptRecord, RatedRecord, SFTRecord

PURPOSE = "fine-tune"
MAX_FILE_BYTES = 100 * 1024 * 1024


def upload_file(
    db: Database,
    blobs: BlobStore,
    tenant_id: str,
    filename: str | None,
    data: bytes,
    purpose: str,
    *,
    max_bytes: int = MAX_FILE_BYTES,
    quotas: Quotas | None = None,
) -> FileInfo:
    """Validate and store a training file. `quotas`: the operator's defaults (None: the
    process's settings); over the tenant's file count or stored bytes it is a 429."""
    if purpose != PURPOSE:
        raise bad_request(
            f"Tailor stores files for fine-tuning only: purpose must be {PURPOSE!r} (got {purpose!r}).",
            code="invalid_purpose",
            param="purpose",
        )
    check_size(data, max_bytes)
    parsed = parse_jsonl(data)
    return save_file(
        db,
        blobs,
        tenant_id,
        filename,
        data,
        purpose=purpose,
        kind=parsed.kind,
        line_count=len(parsed.records),
        quotas=operator_quotas(quotas),
    )


def check_size(data: bytes, max_bytes: int = MAX_FILE_BYTES) -> None:
    if len(data) > max_bytes:
        raise TailorError(413, f"File exceeds {max_bytes} bytes.", code="file_too_large", param="file")


def read_examples(
    db: Database, blobs: BlobStore, tenant_id: str, file_id: str
) -> list[SFTRecord] | list[PreferenceRecord] | list[PromptRecord] | list[RatedRecord]:
    """The validated examples of a stored file, in file order."""
    return parse_jsonl(file_content(db, blobs, tenant_id, file_id)).records
