"""trainer.files: line-numbered validation of fine-tuning JSONL, storage, tenant scoping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.blobs import BlobStore
from core.db import Database
from core.errors import TailorError
from core.models import Job
from gateway.tenants import create_tenant
from trainer import files
from trainer.datasets import PreferenceRecord, PromptRecord, SFTRecord


@pytest.fixture
def db(sqlite_db: Database) -> Database:
    return sqlite_db


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(str(tmp_path / "blobs"))


def jsonl(*lines: object) -> bytes:
    return "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines).encode() + b"\n"


def chat(q: str = "Hi", a: str = "Hello!") -> dict:
    return {
        "messages": [
            {"role": "system", "content": "Be nice."},
            {"role": "user", "content": q},
            {"role": "assistant", "content": a},
        ]
    }


def pref(q: str = "Hi", good: str = "Hello!", bad: str = "Go away.") -> dict:
    return {
        "input": {"messages": [{"role": "user", "content": q}]},
        "preferred_output": [{"role": "assistant", "content": good}],
        "non_preferred_output": [{"role": "assistant", "content": bad}],
    }


def refused(data: bytes) -> TailorError:
    with pytest.raises(TailorError) as err:
        files.parse_jsonl(data)
    assert err.value.status == 400 and err.value.param == "file"
    return err.value


# --- validation -------------------------------------------------------------------


def test_parses_chat_examples() -> None:
    multi = {
        "messages": [
            {"role": "user", "content": "1?"},
            {"role": "assistant", "content": "one", "weight": 1},
            {"role": "user", "content": "2?"},
            {"role": "assistant", "content": "two"},
            {"role": "user", "content": "trailing question, no answer"},
        ]
    }
    parsed = files.parse_jsonl(b"\xef\xbb\xbf" + jsonl(chat(), "", "   ", multi))
    assert parsed.kind == "sft" and len(parsed.records) == 2
    first = parsed.records[0]
    assert isinstance(first, SFTRecord) and first.answer == "Hello!" and len(first.prompt) == 2
    # Turns after the last answer carry no loss: the record ends with its target.
    assert [m["content"] for m in parsed.records[1].messages] == ["1?", "one", "2?", "two"]
    assert all(set(m) == {"role", "content"} for r in parsed.records for m in r.messages)


def test_reinforcement_rows_may_carry_earlier_turns_and_demonstrations() -> None:
    # OpenAI's reinforcement rows allow assistant turns before the last user turn.
    demo = [{"role": "user", "content": "Code for Paris?"}, {"role": "assistant", "content": "CODE: PAR"}]
    row = {"messages": [*demo, {"role": "user", "content": "Code for Rome?"}], "code": "ROM"}
    plain = {"messages": [{"role": "user", "content": "Code for Oslo?"}], "code": "OSL"}
    parsed = files.parse_jsonl(jsonl(row, plain, row))
    assert parsed.kind == "prompts" and len(parsed.records) == 3
    first = parsed.records[0]
    assert isinstance(first, PromptRecord) and len(first.messages) == 3 and first.fields() == {"code": "ROM"}
    assert files.parse_jsonl(jsonl(row)).kind == "prompts"
    # In a file of chat examples the same line is one more chat example, its last question unanswered.
    mixed = files.parse_jsonl(jsonl(row, chat(), row))
    assert mixed.kind == "sft" and [len(r.messages) for r in mixed.records] == [2, 3, 2]
    with pytest.raises(TailorError, match="line 2: is a preference example but line 1 is a prompt"):
        files.parse_jsonl(jsonl(row, pref()))
    with pytest.raises(TailorError, match="line 3: is a prompt .* but line 1 is a rated"):
        files.parse_jsonl(jsonl({**chat(), "label": True}, {**chat(), "label": False}, row))


def test_parses_preference_examples() -> None:
    parsed = files.parse_jsonl(jsonl(pref(), pref("Bye", "Goodbye!", "...")))
    assert parsed.kind == "preference"
    assert parsed.records[0] == PreferenceRecord(
        prompt=({"role": "user", "content": "Hi"},), chosen="Hello!", rejected="Go away."
    )


def test_parses_distillation_inputs() -> None:
    inputs = [
        {"messages": [{"role": "user", "content": "Where is my parcel?"}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Refund?"}]},
    ]
    parsed = files.parse_jsonl(jsonl(*inputs))
    assert parsed.kind == "prompts"
    assert parsed.records == [PromptRecord(messages=tuple(x["messages"])) for x in inputs]  # type: ignore[arg-type]
    with pytest.raises(TailorError, match="line 2: is a chat"):
        files.parse_jsonl(jsonl(inputs[0], chat()))
    with pytest.raises(TailorError, match=r"line 1: messages\[0\].content must be a string"):
        files.parse_jsonl(jsonl({"messages": [{"role": "user", "content": 5}]}))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{oops", "line 2: not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
        ('"text"', "line 2: must be a JSON object, one example per line"),
        ({"prompt": "q", "completion": "a"}, "line 2: expected a chat example"),
        ({"messages": []}, "line 2: messages must be a non-empty list of messages"),
        ({"messages": "hi"}, "line 2: messages must be a non-empty list of messages"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]},
            "line 2: messages[1].role must be one of system, user, assistant (got 'bot')",
        ),
        ({"messages": [{"role": "user", "content": "q"}, "a"]}, "line 2: messages[1] must be an object"),
        (
            {"messages": [{"role": "user", "content": "q"}]},
            "line 2: is a prompt (no answer) but line 1 is a chat (sft) example; a file holds one kind of example",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}]},
            "line 2: messages must contain at least one assistant",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "q"}]},
                    {"role": "assistant", "content": "a"},
                ]
            },
            "line 2: messages[0].content must be a string (got list)",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]},
            "line 2: messages[1].content must be a string (got null)",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]},
            "line 2: messages[1].content must not be empty",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]},
            "line 2: messages[1].weight 0 is not supported",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a", "tool_calls": [{"id": "x"}]},
                ]
            },
            "line 2: messages[1].tool_calls[0] must be",
        ),
        (
            {
                "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "tools": [{"type": "function"}],
            },
            "line 2: tools[0] must be",
        ),
        (pref(), "line 2: is a preference example but line 1 is a chat (sft) example"),
        ({"messages": [{"role": "user", "content": "q"}], **pref()}, "line 2: expected a chat example"),
    ],
)
def test_chat_file_errors_name_line_and_field(line: object, message: str) -> None:
    err = refused(jsonl(chat(), line, chat()))
    assert err.message.startswith(message), err.message


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({k: v for k, v in pref().items() if k != "non_preferred_output"}, "line 3: non_preferred_output is required"),
        (
            {
                **pref(),
                "input": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            },
            "line 3: input.messages must end with a user message (got 'assistant')",
        ),
        ({**pref(), "input": "q"}, "line 3: input must be an object"),
        (
            {**pref(), "preferred_output": [{"role": "user", "content": "x"}]},
            "line 3: preferred_output must be exactly one assistant message",
        ),
        ({**pref(), "preferred_output": []}, "line 3: preferred_output must be a non-empty list"),
        (
            {
                **pref(),
                "non_preferred_output": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}],
            },
            "line 3: non_preferred_output must be exactly one assistant message",
        ),
        (pref(good="same", bad="same"), "line 3: preferred_output and non_preferred_output are identical"),
        (chat(), "line 3: is a chat (sft) example but line 1 is a preference example"),
    ],
)
def test_preference_file_errors(line: object, message: str) -> None:
    err = refused(jsonl(pref(), pref("other"), line))
    assert err.message.startswith(message), err.message


def test_empty_and_bad_encoding() -> None:
    assert refused(b"").code == "empty_file"
    assert refused(b"\n \n\n").code == "empty_file"
    assert refused(jsonl(chat()) + b"\xff\n").message.startswith("line 2: not valid UTF-8")
    with pytest.raises(TailorError) as err:
        files.parse_jsonl(jsonl(chat(), chat(), chat()), max_lines=2)
    assert err.value.code == "file_too_large"


# --- the Files API -----------------------------------------------------------------


def test_upload_get_content_delete(db: Database, blobs: BlobStore) -> None:
    acme = create_tenant(db, "acme").id
    data = jsonl(chat(), chat("Bye", "Goodbye!"))
    info = files.upload_file(db, blobs, acme, "../../etc/train.jsonl", data, "fine-tune")
    assert info.id.startswith("file-") and info.filename == "train.jsonl"
    assert (info.bytes, info.kind, info.line_count, info.purpose) == (len(data), "sft", 2, "fine-tune")
    assert isinstance(info.created_at_unix, int)
    assert blobs.get_bytes(f"files/{acme}/{info.id}.jsonl") == data

    assert files.get_file(db, acme, info.id) == info
    assert files.file_content(db, blobs, acme, info.id) == data
    examples = files.read_examples(db, blobs, acme, info.id)
    assert [e.answer for e in examples] == ["Hello!", "Goodbye!"]  # type: ignore[union-attr]

    assert files.delete_file(db, blobs, acme, info.id) == info
    assert not blobs.exists(f"files/{acme}/{info.id}.jsonl")
    with pytest.raises(TailorError) as err:
        files.get_file(db, acme, info.id)
    assert err.value.status == 404


def test_refusals_store_nothing(db: Database, blobs: BlobStore) -> None:
    acme = create_tenant(db, "acme").id
    with pytest.raises(TailorError) as err:
        files.upload_file(db, blobs, acme, "x.jsonl", jsonl(chat()), "batch")
    assert (err.value.status, err.value.param) == (400, "purpose")
    with pytest.raises(TailorError) as err:
        files.upload_file(db, blobs, acme, "x.jsonl", jsonl(chat()), "fine-tune", max_bytes=10)
    assert (err.value.status, err.value.param) == (413, "file")
    with pytest.raises(TailorError) as err:
        files.upload_file(db, blobs, acme, "x.jsonl", jsonl(chat(), {"messages": 1}), "fine-tune")
    assert err.value.message.startswith("line 2: messages must be")
    assert blobs.list("files") == [] and files.list_files(db, acme).items == []


def test_other_tenants_files_are_not_found(db: Database, blobs: BlobStore) -> None:
    acme, beta = create_tenant(db, "acme").id, create_tenant(db, "beta").id
    info = files.upload_file(db, blobs, acme, "a.jsonl", jsonl(chat()), "fine-tune")
    for call in (
        lambda: files.get_file(db, beta, info.id),
        lambda: files.file_content(db, blobs, beta, info.id),
        lambda: files.read_examples(db, blobs, beta, info.id),
        lambda: files.delete_file(db, blobs, beta, info.id),
        lambda: files.get_file(db, beta, "file-unknown"),
    ):
        with pytest.raises(TailorError) as err:
            call()
        assert (err.value.status, err.value.code) == (404, "file_not_found")
    assert files.list_files(db, beta).items == []
    assert files.get_file(db, acme, info.id) == info  # untouched


def test_list_orders_and_pages(db: Database, blobs: BlobStore) -> None:
    acme = create_tenant(db, "acme").id
    ids = [files.upload_file(db, blobs, acme, f"{i}.jsonl", jsonl(chat(str(i))), "fine-tune").id for i in range(5)]
    newest_first = [i.id for i in files.list_files(db, acme).items]
    assert sorted(newest_first) == sorted(ids)
    assert [i.id for i in files.list_files(db, acme, order="asc").items] == newest_first[::-1]

    for order in ("asc", "desc"):
        seen, after = [], None
        while True:
            page = files.list_files(db, acme, limit=2, order=order, after=after)  # type: ignore[arg-type]
            seen += [i.id for i in page.items]
            if not page.has_more:
                break
            after = page.items[-1].id
        assert seen == (newest_first if order == "desc" else newest_first[::-1])
    assert files.list_files(db, acme, purpose="batch").items == []
    with pytest.raises(TailorError):
        files.list_files(db, acme, limit=0)
    with pytest.raises(TailorError) as err:
        files.list_files(db, acme, after="file-unknown")
    assert (err.value.status, err.value.param) == (400, "after")


def test_file_of_an_unfinished_job_cannot_be_deleted(db: Database, blobs: BlobStore) -> None:
    acme = create_tenant(db, "acme").id
    info = files.upload_file(db, blobs, acme, "a.jsonl", jsonl(chat()), "fine-tune")
    with db.session() as s:
        s.add(
            Job(
                id="ftjob-1",
                tenant_id=acme,
                status="queued",
                method="supervised",
                model="base",
                adapter_name="a",
                training_file=info.id,
                hyperparameters={},
            )
        )
    with pytest.raises(TailorError) as err:
        files.delete_file(db, blobs, acme, info.id)
    assert (err.value.status, err.value.code) == (409, "file_in_use")
    with db.session() as s:
        s.get(Job, "ftjob-1").status = "succeeded"  # type: ignore[union-attr]
    files.delete_file(db, blobs, acme, info.id)
