"""trainer.feedback: recording, validation, tenant isolation, all-or-nothing import, signals."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from core.db import Database
from core.errors import TailorError
from core.ids import utcnow
from core.models import Feedback
from gateway.tenants import create_tenant
from tests.dbutil import add_interaction
from trainer import feedback as fb


def interaction(
    db: Database,
    tenant_id: str,
    *,
    question: str = "What is 2+2?",
    answer: str | None = "4",
    model: str = "helper",
    version: str | None = "ver-1",
    status: int = 200,
) -> str:
    return add_interaction(
        db,
        tenant_id,
        model=model,
        adapter_version_id=version,
        request={"messages": [{"role": "user", "content": question}]},
        response_text=answer,
        status_code=status,
    )


def feedback_count(db: Database) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Feedback)) or 0)


@pytest.fixture
def tenants(db: Database) -> tuple[str, str]:
    return create_tenant(db, "acme").id, create_tenant(db, "beta").id


def refused(call, status: int = 400) -> TailorError:  # type: ignore[no-untyped-def]
    with pytest.raises(TailorError) as err:
        call()
    assert err.value.status == status, err.value
    return err.value


# --- record_feedback --------------------------------------------------------------


def test_record_copies_version_and_model(db: Database, tenants: tuple[str, str]) -> None:
    acme, _ = tenants
    iid = interaction(db, acme, model="support", version="ver-7")
    info = fb.record_feedback(db, acme, interaction_id=iid, rating="good", score=0.9)
    assert info.id.startswith("fb-")
    assert (info.interaction_id, info.adapter_version_id, info.model) == (iid, "ver-7", "support")
    assert (info.rating, info.score, info.source) == ("good", 0.9, "api")
    assert info.created_at.tzinfo is not None

    corrected = fb.record_feedback(db, acme, interaction_id=iid, correction="Four.")
    assert corrected.correction == "Four." and corrected.rating is None
    pair = fb.record_feedback(db, acme, interaction_id=iid, preferred="It is 4.", rejected="5")
    assert (pair.preferred, pair.rejected) == ("It is 4.", "5")
    assert feedback_count(db) == 3


def test_foreign_and_unknown_interactions_read_the_same(db: Database, tenants: tuple[str, str]) -> None:
    acme, beta = tenants
    iid = interaction(db, acme)
    foreign = refused(lambda: fb.record_feedback(db, beta, interaction_id=iid, rating="good"), 404)
    unknown = refused(lambda: fb.record_feedback(db, beta, interaction_id="chatcmpl-nope", rating="good"), 404)
    assert foreign.code == unknown.code == "interaction_not_found"
    assert foreign.param == unknown.param == "interaction_id"
    assert foreign.message.replace(iid, "X") == unknown.message.replace("chatcmpl-nope", "X")
    assert feedback_count(db) == 0


@pytest.mark.parametrize(
    ("kwargs", "param", "fragment"),
    [
        ({}, None, "at least one of rating, score, correction or preferred"),
        ({"rating": "meh"}, "rating", "'good' or 'bad'"),
        ({"score": 1.5}, "score", "from 0 to 1"),
        ({"score": -0.1}, "score", "from 0 to 1"),
        ({"score": True}, "score", "from 0 to 1"),
        ({"score": float("nan")}, "score", "from 0 to 1"),
        ({"correction": "   "}, "correction", "must not be empty"),
        ({"correction": "x" * 32_001}, "correction", "longer than 32000"),
        ({"correction": 5}, "correction", "must be a string"),
        ({"rejected": "bad"}, "preferred", "rejected needs preferred"),
        ({"preferred": "same", "rejected": "same"}, "rejected", "identical"),
    ],
)
def test_invalid_fields_are_400_naming_the_field(
    db: Database, tenants: tuple[str, str], kwargs: dict, param: str | None, fragment: str
) -> None:
    acme, _ = tenants
    iid = interaction(db, acme)
    err = refused(lambda: fb.record_feedback(db, acme, interaction_id=iid, **kwargs))
    assert err.param == param and fragment.lower() in err.message.lower(), err.message
    assert feedback_count(db) == 0


def test_score_is_zero_to_one_and_ints_are_accepted(db: Database, tenants: tuple[str, str]) -> None:
    acme, _ = tenants
    iid = interaction(db, acme)
    assert fb.record_feedback(db, acme, interaction_id=iid, score=1).score == 1.0
    assert fb.record_feedback(db, acme, interaction_id=iid, score=0).score == 0.0


def test_preferred_alone_needs_a_logged_answer(db: Database, tenants: tuple[str, str]) -> None:
    acme, _ = tenants
    failed = interaction(db, acme, answer=None, status=502)
    err = refused(lambda: fb.record_feedback(db, acme, interaction_id=failed, preferred="a better answer"))
    assert err.param == "rejected" and "logged answer" in err.message
    # An explicit pair does not need the logged answer, and a rating of a failure is fine.
    fb.record_feedback(db, acme, interaction_id=failed, preferred="good", rejected="bad")
    fb.record_feedback(db, acme, interaction_id=failed, rating="bad")


# --- import ---------------------------------------------------------------------


def jsonl(*lines: object) -> bytes:
    return "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines).encode() + b"\n"


def test_import_mixes_references_and_self_contained_examples(db: Database, tenants: tuple[str, str]) -> None:
    acme, _ = tenants
    iid = interaction(db, acme, model="support", version="ver-3")
    result = fb.import_feedback_jsonl(
        db,
        acme,
        jsonl(
            {"interaction_id": iid, "rating": "bad", "correction": "Four"},
            {"messages": [{"role": "user", "content": "Hi"}], "ideal": "Hello!"},
            "",  # blank lines are skipped
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Sky?"},
                    {"role": "assistant", "content": "Blue."},
                ],
                "rating": "good",
                "model": "support",
            },
            {"messages": [{"role": "user", "content": "Name?"}], "preferred": "Tailor", "rejected": "I don't know"},
        ),
    )
    assert result.imported == 4 and len(set(result.ids)) == 4
    page = fb.list_feedback(db, acme, limit=10)
    by_id = {i.id: i for i in page.items}
    first = by_id[result.ids[0]]
    assert (first.interaction_id, first.adapter_version_id, first.model, first.source) == (
        iid,
        "ver-3",
        "support",
        "import",
    )
    second = by_id[result.ids[1]]
    assert second.correction == "Hello!" and second.interaction_id is None and second.model is None
    assert second.messages == ({"role": "user", "content": "Hi"},)
    assert by_id[result.ids[2]].model == "support"


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("{not json", "line 2: not valid JSON"),
        ([1, 2], "line 2: must be a JSON object"),
        ({"rating": "good"}, "line 2: give either interaction_id"),
        (
            {"interaction_id": "x", "messages": [{"role": "user", "content": "q"}], "rating": "good"},
            "line 2: give either interaction_id",
        ),
        (
            {"messages": [{"role": "bot", "content": "q"}], "ideal": "a"},
            "line 2: messages[0].role must be one of system, user, assistant (got 'bot')",
        ),
        ({"messages": [{"role": "user", "content": "q"}], "rating": "good"}, "line 2: without an assistant answer"),
        ({"messages": [{"role": "user", "content": "q"}], "preferred": "a"}, "line 2: without an assistant answer"),
        ({"messages": [{"role": "assistant", "content": "a"}], "ideal": "b"}, "line 2: messages must end with a user"),
        (
            {"messages": [{"role": "user", "content": "q"}], "ideal": "a", "correction": "b"},
            "line 2: give correction or ideal",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}], "ideal": "a", "raiting": "good"},
            "line 2: unknown field 'raiting'",
        ),
        ({"messages": [{"role": "user", "content": "q"}], "ideal": "a", "rating": "ok"}, "line 2: rating must be"),
        ({"messages": [{"role": "user", "content": "q"}], "ideal": "a", "score": 5}, "line 2: score must be"),
        (
            {"interaction_id": "chatcmpl-unknown", "rating": "good"},
            "line 2: interaction_id 'chatcmpl-unknown' not found",
        ),
    ],
)
def test_import_refuses_everything_on_one_bad_line(
    db: Database, tenants: tuple[str, str], line: object, fragment: str
) -> None:
    acme, _ = tenants
    good = {"messages": [{"role": "user", "content": "Hi"}], "ideal": "Hello!"}
    err = refused(lambda: fb.import_feedback_jsonl(db, acme, jsonl(good, line, good)))
    assert err.message.startswith(fragment), err.message
    assert "Nothing was imported" in err.message and err.param == "file"
    assert feedback_count(db) == 0


def test_import_refuses_another_tenants_interaction(db: Database, tenants: tuple[str, str]) -> None:
    acme, beta = tenants
    theirs = interaction(db, beta)
    mine = interaction(db, acme)
    err = refused(
        lambda: fb.import_feedback_jsonl(
            db, acme, jsonl({"interaction_id": mine, "rating": "good"}, {"interaction_id": theirs, "rating": "good"})
        )
    )
    assert err.message.startswith(f"line 2: interaction_id {theirs!r} not found")
    assert feedback_count(db) == 0


def test_import_limits(db: Database, tenants: tuple[str, str]) -> None:
    acme, _ = tenants
    line = {"messages": [{"role": "user", "content": "Hi"}], "ideal": "Hello!"}
    err = refused(lambda: fb.import_feedback_jsonl(db, acme, jsonl(line, line, line), max_lines=2))
    assert err.code == "too_many_lines"
    assert refused(lambda: fb.import_feedback_jsonl(db, acme, b"\n  \n")).code == "empty_file"
    assert refused(lambda: fb.import_feedback_jsonl(db, acme, b"\xff\xfe\n")).message.startswith(
        "line 1: not valid UTF-8"
    )
    assert fb.import_feedback_jsonl(db, acme, b"\xef\xbb\xbf" + jsonl(line)).imported == 1  # BOM


GOOD_LINE = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "ideal": "Hello!"}).encode()
# What Python's json refuses with RecursionError and ValueError rather than JSONDecodeError.
UNPARSABLE = {
    "deep-nesting": (b'{"messages": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "nested too deeply"),
    "long-integer": (b'{"interaction_id": "x", "score": ' + b"9" * 5000 + b"}", "more than 4300 digits"),
}


@pytest.mark.parametrize("line, reason", UNPARSABLE.values(), ids=UNPARSABLE.keys())
def test_import_refuses_what_json_cannot_parse_naming_the_line(
    db: Database, tenants: tuple[str, str], line: bytes, reason: str
) -> None:
    acme, _ = tenants
    err = refused(lambda: fb.import_feedback_jsonl(db, acme, GOOD_LINE + b"\n" + line + b"\n" + GOOD_LINE))
    assert err.message.startswith("line 2: not valid JSON") and reason in err.message, err.message
    assert err.param == "file" and err.code == "invalid_file"
    assert feedback_count(db) == 0


def test_import_refuses_a_huge_integer_score_without_overflowing(db: Database, tenants: tuple[str, str]) -> None:
    # Parsable (under Python's digit limit) but too large for a float.
    acme, _ = tenants
    line = b'{"messages": [{"role": "user", "content": "q"}], "ideal": "a", "score": ' + b"9" * 4000 + b"}"
    err = refused(lambda: fb.import_feedback_jsonl(db, acme, GOOD_LINE + b"\n" + line))
    assert err.message.startswith("line 2: score must be a number from 0 to 1"), err.message
    assert len(err.message) < 200  # the value is quoted, not all 4000 digits of it
    assert feedback_count(db) == 0


# --- list and signal ----------------------------------------------------------------


def test_list_is_tenant_scoped_and_paginates(db: Database, tenants: tuple[str, str]) -> None:
    acme, beta = tenants
    mine = [fb.record_feedback(db, acme, interaction_id=interaction(db, acme), rating="good").id for _ in range(5)]
    fb.record_feedback(db, beta, interaction_id=interaction(db, beta), rating="bad")

    seen: list[str] = []
    after = None
    while True:
        page = fb.list_feedback(db, acme, limit=2, after=after)
        seen += [i.id for i in page.items]
        if not page.has_more:
            break
        after = page.items[-1].id
    assert sorted(seen) == sorted(mine) and len(seen) == 5
    created = [i.created_at for i in fb.list_feedback(db, acme, limit=10).items]
    assert created == sorted(created, reverse=True)

    theirs = fb.list_feedback(db, beta).items[0].id
    assert refused(lambda: fb.list_feedback(db, acme, after=theirs)).param == "after"
    assert refused(lambda: fb.list_feedback(db, acme, limit=0)).param == "limit"


def test_signal_counts_the_newest_opinion_per_answer(db: Database, tenants: tuple[str, str]) -> None:
    acme, beta = tenants
    a = interaction(db, acme, version="ver-1")
    b = interaction(db, acme, version="ver-1")
    c = interaction(db, acme, version="ver-2")
    d = interaction(db, acme, version="ver-2")
    fb.record_feedback(db, acme, interaction_id=a, rating="bad")
    fb.record_feedback(db, acme, interaction_id=a, rating="good")  # changed their mind
    fb.record_feedback(db, acme, interaction_id=b, score=0.2)  # reads as bad
    fb.record_feedback(db, acme, interaction_id=b, correction="better")  # no new verdict
    fb.record_feedback(db, acme, interaction_id=c, score=0.75)
    fb.record_feedback(db, acme, interaction_id=d, preferred="better than the logged one")
    fb.import_feedback_jsonl(db, acme, jsonl({"messages": [{"role": "user", "content": "q"}], "ideal": "a"}))
    fb.record_feedback(db, beta, interaction_id=interaction(db, beta, version="ver-1"), rating="bad")

    every = fb.feedback_signal(db, acme)
    assert (every.judged, every.good, every.bad, every.corrections) == (4, 2, 1, 2)
    assert every.share_good == pytest.approx(2 / 3) and every.correction_rate == pytest.approx(0.5)

    v1 = fb.feedback_signal(db, acme, "ver-1")
    assert (v1.judged, v1.good, v1.bad, v1.corrections) == (2, 1, 1, 1)
    v2 = fb.feedback_signal(db, acme, adapter_version_id="ver-2")
    assert (v2.good, v2.bad, v2.share_good) == (1, 0, 1.0)

    empty = fb.feedback_signal(db, acme, "ver-none")
    assert (empty.judged, empty.share_good, empty.correction_rate) == (0, None, None)


def test_signal_since(db: Database, tenants: tuple[str, str]) -> None:
    acme, _ = tenants
    old = fb.record_feedback(db, acme, interaction_id=interaction(db, acme), rating="bad")
    fb.record_feedback(db, acme, interaction_id=interaction(db, acme), rating="good")
    with db.session() as s:
        s.execute(update(Feedback).where(Feedback.id == old.id).values(created_at=utcnow() - timedelta(days=2)))
    recent = fb.feedback_signal(db, acme, since=utcnow() - timedelta(days=1))
    assert (recent.good, recent.bad) == (1, 0)
    naive = fb.feedback_signal(db, acme, since=(utcnow() - timedelta(days=3)).replace(tzinfo=None))
    assert (naive.good, naive.bad) == (1, 1)
