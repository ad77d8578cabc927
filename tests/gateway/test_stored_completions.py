"""gateway/stored_completions.py and stored_completions_file.py on SQLite and PostgreSQL:
which logged rows are stored completions, filters (metadata keys of any spelling), paging,
retention, metadata updates with redaction, delete, the training file."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import select, update

from core.blobs import BlobStore
from core.db import Database
from core.errors import TailorError
from core.ids import new_id
from core.models import Feedback, Interaction, Tenant
from gateway import stored_completions as sc
from gateway.privacy import apply_retention
from gateway.stored_completions_file import create_training_file, example
from gateway.tenants import create_tenant
from tests.dbutil import add_interaction
from trainer import files

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
QUESTION = [{"role": "user", "content": "Capital of France?"}]


@pytest.fixture
def tenants(db: Database) -> tuple[str, str]:
    return create_tenant(db, "acme").id, create_tenant(db, "beta").id


def stored(db: Database, tenant_id: str, *, minutes: float = 0, **fields: Any) -> str:
    """A stored chat completion of `tenant_id`, created `minutes` after NOW."""
    row: dict[str, Any] = {
        "model": "teacher",
        "request": {"messages": QUESTION, "store": True, "temperature": 0},
        "response_text": "Paris.",
        "finish_reason": "stop",
        "prompt_tokens": 7,
        "completion_tokens": 2,
        "stored": True,
        "stored_metadata": {},
        "created_at": NOW + timedelta(minutes=minutes),
    }
    return add_interaction(db, tenant_id, **{**row, **fields})


def ids(page: sc.Page[sc.StoredCompletion]) -> list[str]:
    return [c.id for c in page.items]


def test_only_answered_stored_rows_of_the_tenant_are_stored_completions(db: Database, tenants: tuple[str, str]) -> None:
    acme, beta = tenants
    kept = stored(db, acme, stored_metadata={"task": "geo"})
    stored(db, acme, stored=False)  # logged without store: true
    stored(db, acme, status_code=400)  # refused
    stored(db, acme, status_code=499)  # the client left mid-stream
    stored(db, beta)
    page = sc.list_completions(db, acme, sc.Filter(), now=NOW)
    assert ids(page) == [kept] and not page.has_more
    got = sc.get_completion(db, acme, kept, now=NOW)
    assert (got.model, got.answer, got.metadata, got.request["messages"]) == (
        "teacher",
        "Paris.",
        {"task": "geo"},
        QUESTION,
    )
    for other in (new_id("chatcmpl"), "x" * 500, sc.list_completions(db, beta, sc.Filter(), now=NOW).items[0].id):
        with pytest.raises(TailorError) as e:
            sc.get_completion(db, acme, other, now=NOW)
        assert (e.value.status, e.value.param) == (404, "completion_id")


@pytest.mark.parametrize("key", ["task", 'a"b', "x.y", "$[0]", "k'q", "ü", "a\\b", "*", ""])
def test_metadata_filters_match_any_key_exactly(db: Database, tenants: tuple[str, str], key: str) -> None:
    acme, _ = tenants
    hit = stored(db, acme, stored_metadata={key: "yes", "other": "1"})
    stored(db, acme, stored_metadata={key: "no"})
    stored(db, acme, stored_metadata={"unrelated": "yes"})
    stored(db, acme, stored_metadata=None)
    assert ids(sc.list_completions(db, acme, sc.Filter(metadata={key: "yes"}), now=NOW)) == [hit]
    both = sc.Filter(metadata={key: "yes", "other": "1"})
    assert ids(sc.list_completions(db, acme, both, now=NOW)) == [hit]
    assert ids(sc.list_completions(db, acme, sc.Filter(metadata={key: "yes", "other": "2"}), now=NOW)) == []


def test_model_filter_and_pages_in_both_orders(db: Database, tenants: tuple[str, str]) -> None:
    acme, _ = tenants
    made = [stored(db, acme, minutes=i, model="teacher") for i in range(5)]
    stored(db, acme, minutes=2.5, model="student")
    # Two rows created at the same instant are still paged in a fixed order (by id).
    twins = sorted([stored(db, acme, minutes=10), stored(db, acme, minutes=10)])
    teacher = sc.Filter(model="teacher")
    first = sc.list_completions(db, acme, teacher, limit=2, now=NOW)
    assert ids(first) == made[:2] and first.has_more
    rest = sc.list_completions(db, acme, teacher, after=made[1], limit=10, now=NOW)
    assert ids(rest) == made[2:] + twins and not rest.has_more
    newest = sc.list_completions(db, acme, teacher, order="desc", limit=3, now=NOW)
    assert ids(newest) == [*reversed(twins), made[4]] and newest.has_more
    older = sc.list_completions(db, acme, teacher, order="desc", after=twins[0], limit=10, now=NOW)
    assert ids(older) == list(reversed(made))
    every = [c.id for c in sc.iter_completions(db, acme, sc.Filter(), now=NOW, chunk=2)]
    assert len(every) == 8 and len(set(every)) == 8


def test_bad_page_arguments_are_400s_naming_them(db: Database, tenants: tuple[str, str]) -> None:
    acme, beta = tenants
    foreign = stored(db, beta)
    for kwargs, param in (
        ({"limit": 0}, "limit"),
        ({"limit": sc.MAX_PAGE + 1}, "limit"),
        ({"order": "sideways"}, "order"),
        ({"after": foreign}, "after"),
        ({"after": "nope"}, "after"),
    ):
        with pytest.raises(TailorError) as e:
            sc.list_completions(db, acme, sc.Filter(), now=NOW, **kwargs)
        assert (e.value.status, e.value.param) == (400, param)


def test_metadata_filter_from_query_parameters() -> None:
    query = [("metadata[task]", "geo"), ("model", "m"), ("metadata[a b]", "c"), ("metadata", "x")]
    assert sc.metadata_filter(query) == {"task": "geo", "a b": "c"}
    for bad in ([(f"metadata[k{i}]", "v") for i in range(17)], [("metadata[" + "k" * 65 + "]", "v")]):
        with pytest.raises(TailorError) as e:
            sc.metadata_filter(bad)
        assert (e.value.status, e.value.param) == (400, "metadata")


def test_expired_completions_are_gone_before_and_after_the_retention_run(
    db: Database, tenants: tuple[str, str]
) -> None:
    acme, _ = tenants
    old = stored(db, acme, minutes=-3 * 24 * 60)
    fresh = stored(db, acme)
    assert ids(sc.list_completions(db, acme, sc.Filter(), now=NOW)) == [old, fresh]
    with db.session() as s:
        s.execute(update(Tenant).where(Tenant.id == acme).values(retention_days=2))
    # Hidden from the moment the period ends, before any retention run deletes the row.
    assert ids(sc.list_completions(db, acme, sc.Filter(), now=NOW)) == [fresh]
    for call in (sc.get_completion, sc.delete_completion):
        with pytest.raises(TailorError) as e:
            call(db, acme, old, now=NOW)
        assert e.value.status == 404
    with pytest.raises(TailorError):
        sc.list_completions(db, acme, sc.Filter(), after=old, now=NOW)
    assert apply_retention(db, NOW).interactions == 1
    with db.session() as s:
        assert s.get(Interaction, old) is None


def test_metadata_update_replaces_and_is_redacted_like_the_log(db: Database, tenants: tuple[str, str]) -> None:
    acme, beta = tenants
    cid = stored(db, acme, stored_metadata={"task": "geo", "old": "1"})
    assert sc.update_metadata(db, acme, cid, {"task": "math"}, now=NOW).metadata == {"task": "math"}
    assert sc.get_completion(db, acme, cid, now=NOW).metadata == {"task": "math"}
    assert sc.update_metadata(db, acme, cid, None, now=NOW).metadata == {}
    with pytest.raises(TailorError) as e:
        sc.update_metadata(db, beta, cid, {"x": "y"}, now=NOW)
    assert e.value.status == 404
    contact = {"owner": "ann@example.com"}
    assert sc.update_metadata(db, acme, cid, contact, redact_all=True, now=NOW).metadata == {"owner": "[EMAIL]"}
    with db.session() as s:
        s.execute(update(Tenant).where(Tenant.id == acme).values(redact_pii=True))
    assert sc.update_metadata(db, acme, cid, contact, now=NOW).metadata == {"owner": "[EMAIL]"}


def test_delete_removes_the_conversation_and_its_feedback_but_keeps_metering(
    db: Database, tenants: tuple[str, str]
) -> None:
    acme, beta = tenants
    cid = stored(db, acme, stored_metadata={"task": "geo"})
    with db.session() as s:
        s.add(Feedback(id=new_id("fb"), tenant_id=acme, interaction_id=cid, correction="Paris, France."))
    with pytest.raises(TailorError):
        sc.delete_completion(db, beta, cid, now=NOW)
    assert sc.delete_completion(db, acme, cid, now=NOW) == cid
    with pytest.raises(TailorError) as e:
        sc.get_completion(db, acme, cid, now=NOW)
    assert e.value.status == 404
    with db.session() as s:
        row = s.get(Interaction, cid)
        assert row is not None
        assert (row.stored, row.stored_metadata, row.request, row.response_text) == (False, None, {}, None)
        assert (row.model, row.prompt_tokens, row.completion_tokens) == ("teacher", 7, 2)
        assert s.scalars(select(Feedback).where(Feedback.interaction_id == cid)).all() == []


def test_messages_pages_and_content_parts() -> None:
    request = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "name": "ann"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
            {"role": "tool", "content": "42", "tool_call_id": "c1"},
        ]
    }
    completion = sc.StoredCompletion("cid", "m", NOW, request, "ok", "stop", 1, 1, {})
    listed = sc.messages(completion)
    assert [m.id for m in listed] == ["cid-0", "cid-1", "cid-2", "cid-3"]
    assert (listed[1].content, listed[1].content_parts, listed[1].name) == (
        "a\nb",
        request["messages"][1]["content"],
        "ann",
    )
    assert (listed[2].content, listed[2].tool_calls, listed[3].tool_call_id) == (
        None,
        [{"id": "c1", "type": "function"}],
        "c1",
    )
    page = sc.message_page(completion, limit=3)
    assert [m.id for m in page.items] == ["cid-0", "cid-1", "cid-2"] and page.has_more
    page = sc.message_page(completion, after="cid-2")
    assert [m.id for m in page.items] == ["cid-3"] and not page.has_more
    page = sc.message_page(completion, order="desc", after="cid-2", limit=1)
    assert [m.id for m in page.items] == ["cid-1"] and page.has_more
    with pytest.raises(TailorError) as e:
        sc.message_page(completion, after="other-0")
    assert e.value.param == "after"


def test_storing_is_for_chat_with_store_true_and_one_choice() -> None:
    assert sc.storage("chat", {"store": True, "metadata": {"k": "v"}}) == (True, {"k": "v"})
    assert sc.storage("chat", {"store": True, "n": 1}) == (True, {})
    assert sc.storage("chat", {"metadata": {"k": "v"}}) == (False, None)
    assert sc.storage("chat", {"store": False}) == (False, None)
    assert sc.storage("completion", {"store": True}) == (False, None)
    with pytest.raises(TailorError) as e:
        sc.storage("chat", {"store": True, "n": 2})
    assert (e.value.status, e.value.param) == (400, "n")


# --------------------------------------------------------------------------- the training file


def test_training_file_from_a_filter(db: Database, tenants: tuple[str, str], tmp_path: Any) -> None:
    acme, beta = tenants
    blobs = BlobStore(str(tmp_path / "blobs"))
    task = {"task": "geo"}
    system = {"role": "system", "content": "Answer in one word."}
    for i in (0, 1):
        stored(db, acme, minutes=i, stored_metadata=task, request={"messages": [system, *QUESTION]})
    stored(db, acme, minutes=2, stored_metadata=task, finish_reason="length")  # cut off: teaches stopping mid-answer
    stored(db, acme, minutes=3, stored_metadata=task, request={"messages": [{"role": "tool", "content": "x"}]})
    stored(db, acme, minutes=4, stored_metadata={"task": "other"})
    stored(db, acme, minutes=5, stored_metadata=task, model="student")
    stored(db, beta, stored_metadata=task)
    made = create_training_file(db, blobs, acme, sc.Filter(model="teacher", metadata=task), filename="geo.jsonl")
    assert (made.examples, made.skipped, made.file.kind, made.file.filename) == (2, 2, "sft", "geo.jsonl")
    parsed = files.parse_jsonl(files.file_content(db, blobs, acme, made.file.id))
    chat = (system, *QUESTION, {"role": "assistant", "content": "Paris."})
    assert [r.messages for r in parsed.records] == [chat, chat]
    with pytest.raises(TailorError) as e:
        create_training_file(db, blobs, beta, sc.Filter(metadata={"task": "nothing"}))
    assert (e.value.status, e.value.code) == (400, "no_examples")
    with pytest.raises(TailorError) as e:
        create_training_file(db, blobs, acme, sc.Filter(metadata=task), max_examples=1)
    assert (e.value.status, e.value.code) == (400, "too_many_examples")


def test_an_example_needs_a_trainable_prompt_and_a_finished_text_answer() -> None:
    def completion(**fields: Any) -> sc.StoredCompletion:
        base: dict[str, Any] = {
            "id": "c",
            "model": "m",
            "created_at": NOW,
            "request": {"messages": QUESTION},
            "answer": "Paris.",
            "finish_reason": "stop",
            "prompt_tokens": 1,
            "completion_tokens": 1,
            "metadata": {},
        }
        return sc.StoredCompletion(**{**base, **fields})

    assert example(completion()) == (*QUESTION, {"role": "assistant", "content": "Paris."})
    developer = {"messages": [{"role": "developer", "content": "Be brief."}, *QUESTION]}
    assert example(completion(request=developer))[0] == {"role": "system", "content": "Be brief."}  # type: ignore[index]
    empty_turn = [*QUESTION, {"role": "assistant", "content": ""}, *QUESTION]
    for unusable in (
        completion(finish_reason="length"),
        completion(finish_reason="tool_calls", answer=""),
        completion(answer="   "),
        completion(answer=None),
        completion(request={}),  # deleted: nothing left to train on
        completion(request={"messages": [*QUESTION, {"role": "assistant", "content": "Par"}]}),  # prefill
        completion(request={"messages": empty_turn}),
    ):
        assert example(unusable) is None, unusable
