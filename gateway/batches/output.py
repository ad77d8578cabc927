"""OpenAI's batch output lines, and the output and error files of an ended batch.

A line that got an HTTP answer carries it: `{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error": null}`; with status 200 it goes to the output file, with any
other status (a refusal, a model that is gone, an engine failure) to the error file, as
OpenAI does. A request that got no answer at all carries `"response": null` and
`"error": {"code", "message"}` instead: requests left when the completion window closed
(`batch_expired`, in the error file). A cancelled batch lists only what ran.

Both files have purpose `batch_output` and are written once a batch ends, in input order.
Their ids follow from the batch's, so a gateway that takes over a batch whose first gateway
died while writing them finds, and keeps, what was written already.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import orjson
from sqlalchemy.exc import IntegrityError

from core.blobs import BlobStore
from core.db import Database
from core.ids import new_id
from core.models import StoredFile
from gateway.batches.input_file import RequestLine
from gateway.batches.lease import LineResult
from gateway.batches.store import BatchInfo
from trainer import files

PURPOSE = "batch_output"
EXPIRED = ("batch_expired", "This request could not be executed before the completion window expired.")


def answered(custom_id: str, status: int, request_id: str | None, body: Any) -> dict[str, Any]:
    """A line that got an HTTP answer. `request_id`: the interaction id it was logged under;
    None for a line refused before it reached the live path (a streamed or invalid body),
    which then carries its own id there."""
    line_id = new_id("batch_req", "_")
    return {
        "id": line_id,
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id or line_id, "body": body},
        "error": None,
    }


def unanswered(custom_id: str, code: str, message: str) -> dict[str, Any]:
    error = {"code": code, "message": message}
    return {"id": new_id("batch_req", "_"), "custom_id": custom_id, "response": None, "error": error}


def file_id(batch_id: str, which: str) -> str:
    return "file-" + hashlib.sha256(f"{batch_id}/{which}".encode()).hexdigest()[:24]


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def _save(db: Database, blobs: BlobStore, batch: BatchInfo, which: str, lines: list[dict[str, Any]]) -> str | None:
    if not lines:
        return None  # as OpenAI: no file when there is nothing to put in it
    fid = file_id(batch.id, which)
    with db.session() as s:
        if s.get(StoredFile, fid) is not None:
            return fid  # written by a gateway that died before it could end the batch
    # Not checked against the tenant's file quotas: the work is done; the files count from now on.
    # An IntegrityError: another writer stored it between the check and here (or the tenant is
    # gone, which ending the batch finds out).
    with contextlib.suppress(IntegrityError):
        files.save_file(
            db,
            blobs,
            batch.tenant_id,
            f"{batch.id}_{which}.jsonl",
            _jsonl(lines),
            purpose=PURPOSE,
            kind=PURPOSE,
            line_count=len(lines),
            quotas=None,
            file_id=fid,
        )
    return fid


def write_files(
    db: Database, blobs: BlobStore, batch: BatchInfo, done: list[LineResult], expired: list[RequestLine]
) -> tuple[str | None, str | None]:
    """(output file id, error file id) of an ending batch: its recorded lines, and for an
    expired batch every request that did not run."""
    outputs = [r.output for r in done if not r.failed]
    failed = [(r.line, r.output) for r in done if r.failed]
    failed += [(line.index, unanswered(line.custom_id, *EXPIRED)) for line in expired]
    errors = [output for _, output in sorted(failed, key=lambda pair: pair[0])]
    return _save(db, blobs, batch, "output", outputs), _save(db, blobs, batch, "error", errors)
