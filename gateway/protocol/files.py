"""OpenAI's file objects (`/v1/files`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from gateway.protocol.wire import UnixTime, WireModel


# model_validate(trainer.files.FileInfo)
class OpenAIFileOut(WireModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: UnixTime
    filename: str
    purpose: str
    # Deprecated by OpenAI but still required by its schema; files are validated on
    # upload, so a stored file is always processed.
    status: Literal["processed"] = "processed"


class ListFilesOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIFileOut]
    # OpenAI's schema requires both as strings; an empty page has no ids, so "".
    first_id: str
    last_id: str
    has_more: bool


class DeleteFileOut(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool
