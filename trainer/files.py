"""Training files (OpenAI's Files API, purpose "fine-tune"): validate, store, read back.

The store itself (`save_file`, `get_file`, `list_files`, `file_content`, `delete_file`) serves
every purpose: batch input and output files (gateway.batches) are kept the same way.

A file is checked line by line when it is uploaded, so a bad example is refused with its
line number at once instead of failing a training job minutes later. These formats are
accepted, one per file:

- "sft" (OpenAI chat fine-tuning): `{"messages": [{"role": "system"|"user"|"assistant",
  "content": str}, ...]}` with at least one assistant message; also with OpenAI's
  function-calling fields (`tools`, assistant `tool_calls`, `tool` turns,
  `parallel_tool_calls`), trained in the text form trainer.tool_examples documents;
- "preference" (OpenAI DPO): `{"input": {"messages": [...]}, "preferred_output":
  [{"role": "assistant", "content": str}], "non_preferred_output": [...]}`;
- "prompts" (Tailor's distillation inputs, OpenAI's reinforcement rows): `{"messages": [...]}`
  with no assistant message, ending with a user turn, plus any other fields (a reinforcement
  job's grader reads them as `{{ item.<field> }}`); a teacher or the trained model answers;
- "rated" (Tailor's KTO examples, thumbs up or down): `{"messages": [..., {"role":
  "assistant", "content": str}], "label": true | false}`: the last assistant message is the
  answer, rated good (true) or bad (false).

Blank lines are skipped (a trailing newline is not an example). Bytes live in the blob
store under `files/<tenant>/<file id>.jsonl`, written before the row that points at them.
Every lookup is tenant-scoped; another tenant's file reads as unknown (404).
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.blobs import BlobStore
from core.db import Database
from core.errors import TailorError, bad_request, conflict, not_found
from core.ids import new_id
from core.models import UNFINISHED_BATCH_STATES, Batch, Job, StoredFile
from core.pages import Page, check_limit, check_order, tenant_page
from core.quotas import Quotas, Usage, operator_quotas, precheck, reserve
from core.rows import from_row, owned
from core.states import OPEN_JOB_STATUSES
from trainer import tool_examples
from trainer.datasets import (
    InvalidExample,
    Message,
    PreferenceRecord,
    PromptRecord,
    RatedRecord,
    SFTRecord,
    check_messages,
)
from trainer.jsonl import JsonLine, JsonLineError, json_lines

PURPOSE = "fine-tune"
MAX_FILE_BYTES = 100 * 1024 * 1024
MAX_FILE_LINES = 100_000
MAX_LIST_LIMIT = 10_000

Kind = Literal["sft", "preference", "prompts", "rated"]
_KIND_NAMES = {
    "sft": "a chat (sft) example",
    "preference": "a preference example",
    "prompts": "a prompt (no answer)",
    "rated": "a rated (kto) example",
}
_SFT_KEYS = {"messages"}
_PREFERENCE_KEYS = {"input", "preferred_output", "non_preferred_output"}
_UNSUPPORTED_KEYS = ("tools", "functions", "parallel_tool_calls")


@dataclass(frozen=True)
class FileInfo:
    id: str
    tenant_id: str
    filename: str
    purpose: str
    bytes: int
    kind: str  # a training file's Kind, or "batch" / "batch_output"
    line_count: int
    sha256: str
    created_at: datetime

    @property
    def created_at_unix(self) -> int:
        return int(self.created_at.timestamp())


FilePage = Page[FileInfo]


@dataclass(frozen=True)
class ParsedFile:
    kind: Kind
    records: list[SFTRecord] | list[PreferenceRecord] | list[PromptRecord]


def _info(row: StoredFile) -> FileInfo:
    return from_row(FileInfo, row)


def _file_error(message: str, *, code: str = "invalid_file") -> TailorError:
    return bad_request(message, code=code, param="file")


# -----------------------------------------------------------------------------
# validation


def _lines(data: bytes) -> Iterator[JsonLine]:
    """trainer.jsonl's lines, its errors as this module's 400s."""
    try:
        yield from json_lines(data)
    except JsonLineError as exc:
        raise _file_error(str(exc)) from None


def parse_jsonl(data: bytes, *, max_lines: int = MAX_FILE_LINES) -> ParsedFile:
    """Validate a fine-tuning file and return its examples; TailorError 400 names the line."""
    kind: Kind | None = None
    first_line = 0
    records: list[Any] = []
    for line in _lines(data):
        if len(records) >= max_lines:
            raise _file_error(f"file has more than {max_lines} examples", code="file_too_large")
        lineno, obj = line.lineno, line.value
        if not isinstance(obj, dict):
            raise _file_error(f"line {lineno}: must be a JSON object, one example per line")
        line_kind = _kind_of(obj)
        if line_kind is None:
            raise _file_error(
                f'line {lineno}: expected a chat example {{"messages": [...]}} or a preference example '
                '{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}'
            )
        if kind is None:
            kind, first_line = line_kind, lineno
        elif line_kind != kind:
            raise _file_error(
                f"line {lineno}: is {_KIND_NAMES[line_kind]} but line {first_line} is "
                f"{_KIND_NAMES[kind]}; a file holds one kind of example"
            )
        try:
            records.append(_PARSERS[line_kind](obj))
        except InvalidExample as exc:
            raise _file_error(f"line {lineno}: {exc}") from None
    if kind is None:
        raise _file_error("file is empty: expected one JSON example per line", code="empty_file")
    return ParsedFile(kind=kind, records=records)


def _kind_of(obj: dict[str, Any]) -> Kind | None:
    if "messages" in obj and "label" in obj and not (_PREFERENCE_KEYS & obj.keys()):
        return "rated"
    if "messages" in obj and not (_PREFERENCE_KEYS & obj.keys()):
        # An input to answer ends with a user turn and has no answer anywhere; anything
        # else is read as a chat example, whose validation names what is wrong with it.
        messages = obj["messages"]
        is_prompt = (
            isinstance(messages, list)
            and bool(messages)
            and isinstance(messages[-1], dict)
            and messages[-1].get("role") == "user"
            and not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages)
        )
        return "prompts" if is_prompt else "sft"
    if _PREFERENCE_KEYS & obj.keys() and "messages" not in obj:
        return "preference"
    return None


def _refuse_unsupported(obj: dict[str, Any]) -> None:
    for key in _UNSUPPORTED_KEYS:
        if obj.get(key):
            raise InvalidExample(f"{key} is not supported here (tools are trained in chat (sft) examples only)")


def _sft(obj: dict[str, Any]) -> SFTRecord:
    if tool_examples.has_tools(obj):
        if obj.get("functions"):
            raise InvalidExample("functions is not supported (use tools)")
        return _answered(tool_examples.text_turns(obj))
    _refuse_unsupported(obj)
    return _answered(check_messages(obj.get("messages"), "messages"))


def _answered(messages: tuple[Message, ...]) -> SFTRecord:
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise InvalidExample("messages must contain at least one assistant message")
    # Turns after the last answer carry no loss; the record ends with its target.
    return SFTRecord(messages=messages[: last + 1])


def _prompt(obj: dict[str, Any]) -> PromptRecord:
    _refuse_unsupported(obj)
    # The other fields are what a reinforcement job's grader reads ({{ item.<field> }}).
    return PromptRecord.from_json({**obj, "messages": check_messages(obj.get("messages"), "messages")})


def _preference(obj: dict[str, Any]) -> PreferenceRecord:
    _refuse_unsupported(obj)
    missing = [k for k in ("input", "preferred_output", "non_preferred_output") if k not in obj]
    if missing:
        raise InvalidExample(f"{missing[0]} is required in a preference example")
    inp = obj["input"]
    if not isinstance(inp, dict):
        raise InvalidExample("input must be an object with messages")
    _refuse_unsupported(inp)
    prompt = check_messages(inp.get("messages"), "input.messages")
    if prompt[-1]["role"] != "user":
        raise InvalidExample(f"input.messages must end with a user message (got {prompt[-1]['role']!r})")
    chosen = _single_answer(obj["preferred_output"], "preferred_output")
    rejected = _single_answer(obj["non_preferred_output"], "non_preferred_output")
    if chosen == rejected:
        raise InvalidExample("preferred_output and non_preferred_output are identical")
    return PreferenceRecord(prompt=prompt, chosen=chosen, rejected=rejected)


def _rated(obj: dict[str, Any]) -> RatedRecord:
    label = obj.get("label")
    if not isinstance(label, bool):
        raise InvalidExample(f"label must be true (a good answer) or false (a bad one), got {label!r}")
    _refuse_unsupported(obj)
    answered = _answered(check_messages(obj.get("messages"), "messages"))
    if answered.prompt[-1]["role"] != "user":
        raise InvalidExample("the rated answer must follow a user message")
    return RatedRecord(prompt=answered.prompt, completion=answered.answer, label=label)


_PARSERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "sft": _sft,
    "preference": _preference,
    "prompts": _prompt,
    "rated": _rated,
}


def _single_answer(value: Any, where: str) -> str:
    messages = check_messages(value, where)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise InvalidExample(f"{where} must be exactly one assistant message")
    return messages[0]["content"]


# -----------------------------------------------------------------------------
# the Files API


def storage_key(tenant_id: str, file_id: str) -> str:
    return f"files/{tenant_id}/{file_id}.jsonl"


def _clean_filename(filename: str | None) -> str:
    # Only shown back to the client; the blob key uses the file id, never this name.
    name = posixpath.basename((filename or "").replace("\\", "/")).strip()
    name = "".join(ch for ch in name if ch.isprintable())
    return (name or "upload.jsonl")[:255]


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


def save_file(
    db: Database,
    blobs: BlobStore,
    tenant_id: str,
    filename: str | None,
    data: bytes,
    *,
    purpose: str,
    kind: str,
    line_count: int,
    quotas: Quotas | None,
    file_id: str | None = None,
) -> FileInfo:
    """Store already validated bytes as a file of the Files API. With `quotas`, the tenant's
    file count and stored bytes are checked first (429 over them, nothing stored); without,
    the file is kept whatever they say (it is the result of work already done) and counts
    against them from now on. `file_id`: the id to store it under (default: a new one)."""
    adding = Usage(stored_bytes=len(data), files=1)
    if quotas is not None:
        precheck(db, tenant_id, quotas, adding)
    # A given id may already have its row and these same bytes (written by a writer that
    # lost its claim meanwhile): then the blob is that row's, and is not deleted on failure.
    owns_blob = file_id is None
    file_id = file_id or new_id("file")
    key = storage_key(tenant_id, file_id)
    # Blob first: a row always points at complete bytes. A crash in between leaves an
    # unreferenced blob, which is harmless.
    blobs.put_bytes(key, data)
    try:
        with db.session() as s:
            if quotas is not None:
                # Again under the tenant's lock: a concurrent upload may have used the room.
                reserve(s, tenant_id, quotas, adding)
            row = StoredFile(
                id=file_id,
                tenant_id=tenant_id,
                filename=_clean_filename(filename),
                purpose=purpose,
                bytes=len(data),
                kind=kind,
                line_count=line_count,
                storage_key=key,
                sha256=hashlib.sha256(data).hexdigest(),
            )
            s.add(row)
    except Exception:
        if owns_blob:
            blobs.delete(key)
        raise
    return _info(row)


def _row(s: Session, tenant_id: str, file_id: str, param: str) -> StoredFile:
    row = owned(s, StoredFile, file_id, tenant_id)
    if row is None:
        # The same answer for unknown and foreign files: ids of other tenants stay secret.
        raise not_found(f"No such File object: {file_id}", code="file_not_found", param=param)
    return row


def get_file(db: Database, tenant_id: str, file_id: str, *, param: str = "file_id") -> FileInfo:
    with db.session() as s:
        return _info(_row(s, tenant_id, file_id, param))


def list_files(
    db: Database,
    tenant_id: str,
    *,
    purpose: str | None = None,
    limit: int = MAX_LIST_LIMIT,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> FilePage:
    check_limit(limit, MAX_LIST_LIMIT)
    check_order(order)
    with db.session() as s:
        return tenant_page(
            s,
            StoredFile,
            tenant_id,
            where=[StoredFile.purpose == purpose] if purpose is not None else [],
            after=after,
            unknown=f"after {after!r} is not one of your file ids.",
            limit=limit,
            order=order,
        ).map(_info)


def file_content(db: Database, blobs: BlobStore, tenant_id: str, file_id: str) -> bytes:
    with db.session() as s:
        key = _row(s, tenant_id, file_id, "file_id").storage_key
    return blobs.get_bytes(key)


def delete_file(db: Database, blobs: BlobStore, tenant_id: str, file_id: str) -> FileInfo:
    with db.session() as s:
        row = _row(s, tenant_id, file_id, "file_id")
        # A job not yet ended may still read its files; deleting one would fail it later.
        job = s.scalar(
            select(Job.id)
            .where(
                Job.tenant_id == tenant_id,
                Job.status.in_(OPEN_JOB_STATUSES),
                (Job.training_file == file_id) | (Job.validation_file == file_id),
            )
            .limit(1)
        )
        if job is not None:
            raise conflict(
                f"File {file_id} is used by fine-tuning job {job}, which has not finished; "
                "cancel the job or wait for it before deleting the file.",
                code="file_in_use",
                param="file_id",
            )
        batch = s.scalar(
            select(Batch.id)
            .where(
                Batch.tenant_id == tenant_id, Batch.status.in_(UNFINISHED_BATCH_STATES), Batch.input_file_id == file_id
            )
            .limit(1)
        )
        if batch is not None:
            raise conflict(
                f"File {file_id} is the input of batch {batch}, which has not finished; "
                "cancel the batch or wait for it before deleting the file.",
                code="file_in_use",
                param="file_id",
            )
        info, key = _info(row), row.storage_key
        s.delete(row)
    # Row first: once it is gone nobody can reach the blob; a failure here only leaves
    # unreferenced bytes behind.
    blobs.delete(key)
    return info


def read_examples(
    db: Database, blobs: BlobStore, tenant_id: str, file_id: str
) -> list[SFTRecord] | list[PreferenceRecord] | list[PromptRecord] | list[RatedRecord]:
    """The validated examples of a stored file, in file order."""
    return parse_jsonl(file_content(db, blobs, tenant_id, file_id)).records
