"""OpenAI's Batch objects (`/v1/batches`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from gateway.batches.store import BatchInfo
from gateway.protocol.wire import UnixTime, attributes
from gateway.request_policy import Metadata


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
    created_at: UnixTime
    in_progress_at: UnixTime | None = None
    expires_at: UnixTime | None = None
    finalizing_at: UnixTime | None = None
    completed_at: UnixTime | None = None
    failed_at: UnixTime | None = None
    expired_at: UnixTime | None = None
    cancelling_at: UnixTime | None = None
    cancelled_at: UnixTime | None = None
    request_counts: RequestCounts
    usage: BatchUsage
    metadata: dict[str, str] | None = None


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


def batch_object(b: BatchInfo) -> BatchObject:
    """`b` field by field, its counts and errors nested as OpenAI's schema has them."""
    return BatchObject.model_validate(
        {
            **attributes(b),
            "errors": {"data": b.errors} if b.errors else None,
            "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
            "usage": b.tokens.usage(),
        }
    )
