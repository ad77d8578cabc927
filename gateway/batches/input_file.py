"""Batch input files (purpose `batch`): one request a line, checked whole before anything is kept.

A line is OpenAI's batch request input: `{"custom_id": str, "method": "POST", "url":
endpoint, "body": {...}}`. A file is refused (400, `param` "file", the line named) when a
line is not such an object, a `custom_id` repeats, the method is not POST, the url is not
an endpoint Tailor runs batches of or differs from the first line's, the body has no
`model`, a `model` is not one the tenant may call, or there are more than
`TAILOR_BATCH_MAX_LINES` requests. The bodies themselves are checked when each line runs,
as a live request's would be: a bad body fails its own line, not the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from adapters import registry
from core.blobs import BlobStore
from core.db import Database
from core.errors import TailorError, bad_request
from core.quotas import Quotas
from trainer import files
from trainer.files import FileInfo
from trainer.jsonl import JsonLineError, json_lines

PURPOSE = "batch"
Answer = Literal["chat", "completion", "responses"]
# Endpoint -> how its lines are answered (gateway.batches.requests).
ENDPOINTS: dict[str, Answer] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completion",
    "/v1/responses": "responses",
}
MAX_CUSTOM_ID_CHARS = 512
_KEYS = ("custom_id", "method", "url", "body")


@dataclass(frozen=True)
class RequestLine:
    index: int  # the request's place among the file's requests, from 0
    lineno: int  # its line in the file, from 1 (blank lines counted), for messages
    custom_id: str
    url: str
    body: dict[str, Any]

    @property
    def model(self) -> str:
        return str(self.body["model"])


def supported_endpoints() -> str:
    return ", ".join(ENDPOINTS)


def _refuse(message: str, *, code: str = "invalid_file", param: str = "file") -> TailorError:
    return bad_request(message, code=code, param=param)


def parse(data: bytes, *, max_lines: int) -> list[RequestLine]:
    """The requests of a batch input file, in order; a 400 naming the first bad line."""
    lines: list[RequestLine] = []
    first_of: dict[str, int] = {}  # custom_id -> the line it first appeared on
    try:
        for raw in json_lines(data):
            if len(lines) == max_lines:
                raise _refuse(f"file has more than {max_lines} requests; split it into several batches")
            line = _request(len(lines), raw.lineno, raw.value)
            if line.custom_id in first_of:
                raise _refuse(
                    f"line {line.lineno}: custom_id {line.custom_id!r} is also on line {first_of[line.custom_id]}; "
                    "each request needs its own"
                )
            if lines and line.url != lines[0].url:
                raise _refuse(
                    f"line {line.lineno}: url {line.url!r} differs from line {lines[0].lineno}'s {lines[0].url!r}; "
                    "a batch runs requests of one endpoint"
                )
            first_of[line.custom_id] = line.lineno
            lines.append(line)
    except JsonLineError as exc:
        raise _refuse(str(exc)) from None
    if not lines:
        raise _refuse("file is empty: expected one request per line", code="empty_file")
    return lines


def _request(index: int, lineno: int, obj: Any) -> RequestLine:
    where = f"line {lineno}"
    if not isinstance(obj, dict):
        raise _refuse(f'{where}: must be a JSON object {{"custom_id", "method", "url", "body"}}')
    unknown = sorted(set(obj) - set(_KEYS))
    if unknown:
        raise _refuse(f"{where}: unknown field {unknown[0]!r} (a request has {', '.join(_KEYS)})")
    custom_id, method, url, body = (obj.get(k) for k in _KEYS)
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID_CHARS:
        raise _refuse(f"{where}: custom_id must be a string of 1 to {MAX_CUSTOM_ID_CHARS} characters")
    if method != "POST":
        raise _refuse(f'{where}: method must be "POST" (got {method!r})')
    if url not in ENDPOINTS:
        raise _refuse(f"{where}: url must be one of {supported_endpoints()} (got {url!r})")
    if not isinstance(body, dict):
        raise _refuse(f"{where}: body must be a JSON object, the request's body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _refuse(f"{where}: body.model must name the model to call")
    return RequestLine(index=index, lineno=lineno, custom_id=custom_id, url=url, body=body)


def first_line_per_model(lines: list[RequestLine]) -> Iterator[RequestLine]:
    seen: set[str] = set()
    for line in lines:
        if line.model not in seen:
            seen.add(line.model)
            yield line


def check_models(db: Database, tenant_id: str, lines: list[RequestLine], base_model: str, *, param: str) -> None:
    """Every `model` the lines name is one the tenant may call (the routing the line will use)."""
    for line in first_line_per_model(lines):
        try:
            registry.route(db, tenant_id, line.model, base_model)
        except TailorError as exc:
            if exc.status != 404:
                raise
            raise _refuse(f"line {line.lineno}: {exc.message}", code="model_not_found", param=param) from None


def upload(
    db: Database,
    blobs: BlobStore,
    tenant_id: str,
    filename: str | None,
    data: bytes,
    *,
    base_model: str,
    max_lines: int,
    quotas: Quotas,
) -> FileInfo:
    """Check and store a batch input file (see the module docstring)."""
    files.check_size(data)
    lines = parse(data, max_lines=max_lines)
    check_models(db, tenant_id, lines, base_model, param="file")
    return files.save_file(
        db, blobs, tenant_id, filename, data, purpose=PURPOSE, kind=PURPOSE, line_count=len(lines), quotas=quotas
    )


def read(db: Database, blobs: BlobStore, tenant_id: str, file_id: str, *, max_lines: int) -> list[RequestLine]:
    """The requests of a stored batch input file (checked again: the limit may have changed)."""
    return parse(files.file_content(db, blobs, tenant_id, file_id), max_lines=max_lines)
