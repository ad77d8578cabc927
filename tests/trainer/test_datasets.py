"""trainer.datasets: examples from feedback and files, de-duplication, the held-out split,
reproducible snapshot ids and their storage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core.blobs import BlobStore
from core.db import Database
from core.errors import TailorError
from core.ids import utcnow
from core.models import Dataset
from gateway.tenants import create_tenant
from tests.dbutil import add_interaction
from trainer import datasets as ds
from trainer import files
from trainer.datasets import PreferenceRecord, SFTRecord
from trainer.datasets.heldout import bucket
from trainer.feedback import import_feedback_jsonl, record_feedback


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(str(tmp_path / "blobs"))


@pytest.fixture
def acme(db: Database) -> str:
    return create_tenant(db, "acme").id


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def chat_interaction(
    db: Database,
    tenant_id: str,
    question: str,
    answer: str | None,
    *,
    model: str = "helper",
    request: dict | None = None,
    endpoint: str = "chat.completions",
    status: int = 200,
) -> str:
    return add_interaction(
        db,
        tenant_id,
        endpoint=endpoint,
        model=model,
        request=request or {"messages": [user(question)], "temperature": 0},
        response_text=answer,
        status_code=status,
    )


def sft(question: str, answer: str) -> SFTRecord:
    return SFTRecord(messages=(user(question), {"role": "assistant", "content": answer}))


def everything(snap: ds.Snapshot) -> tuple[set[tuple], set[tuple]]:
    sfts = {tuple((m["role"], m["content"]) for m in r.messages) for r in (*snap.train_sft, *snap.heldout_sft)}
    prefs = {
        (p.prompt[-1]["content"], p.chosen, p.rejected) for p in (*snap.train_preferences, *snap.heldout_preferences)
    }
    return sfts, prefs


def pairs(*qa: tuple[str, str]) -> set[tuple]:
    return {(("user", q), ("assistant", a)) for q, a in qa}


# --- records and checks -------------------------------------------------------------


def test_records_check_their_shape() -> None:
    with pytest.raises(ValueError):
        SFTRecord(messages=(user("q"),))
    with pytest.raises(ValueError):
        PreferenceRecord(prompt=({"role": "assistant", "content": "a"},), chosen="x", rejected="y")
    record = sft("q", "a")
    assert record.prompt == (user("q"),) and record.answer == "a"
    assert SFTRecord.from_json(record.to_json()) == record


def test_verdict_rating_wins_then_score() -> None:
    assert ds.verdict("bad", 0.9) == "bad"
    assert ds.verdict(None, 0.5) == "good" and ds.verdict(None, 0.49) == "bad"
    assert ds.verdict(None, None) is None


def test_prompt_from_request() -> None:
    parts = {
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ]
    }
    assert ds.prompt_from_request("chat.completions", parts) == (
        {"role": "system", "content": "Be brief."},
        user("a\nb"),
    )
    # A Responses API request is logged as the chat request it was answered with.
    assert ds.prompt_from_request("responses", parts) == ds.prompt_from_request("chat.completions", parts)
    assert ds.prompt_from_request("completions", {"prompt": "Once upon"}) is None
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}
    assert ds.prompt_from_request("chat.completions", image) is None
    tool = {"messages": [user("q"), {"role": "tool", "content": "r", "tool_call_id": "1"}]}
    assert ds.prompt_from_request("chat.completions", tool) is None
    prefill = {"messages": [user("q"), {"role": "assistant", "content": "Sure"}]}
    assert ds.prompt_from_request("chat.completions", prefill) is None


# --- build_from_feedback --------------------------------------------------------------


def test_examples_from_feedback(db: Database, blobs: BlobStore, acme: str) -> None:
    good = chat_interaction(db, acme, "Capital of France?", "Paris.")
    bad = chat_interaction(db, acme, "2+2?", "5")
    corrected = chat_interaction(db, acme, "Colour of the sky?", "Green.")
    preferred = chat_interaction(db, acme, "Greet me", "Hi.")
    pair = chat_interaction(db, acme, "Tell a joke", "No.")
    completion = chat_interaction(
        db, acme, "", "Once upon a time", endpoint="completions", request={"prompt": "Story:"}
    )
    failed = chat_interaction(db, acme, "Timeout?", None, status=504)
    record_feedback(db, acme, interaction_id=good, rating="good")
    record_feedback(db, acme, interaction_id=bad, rating="bad")  # nothing to imitate
    record_feedback(db, acme, interaction_id=corrected, rating="bad", correction="Blue.")
    record_feedback(db, acme, interaction_id=preferred, preferred="Hello, nice to meet you!")
    record_feedback(db, acme, interaction_id=pair, preferred="A pun.", rejected="A long lecture.")
    record_feedback(db, acme, interaction_id=completion, rating="good")
    record_feedback(db, acme, interaction_id=failed, rating="good")
    import_feedback_jsonl(
        db,
        acme,
        "\n".join(
            json.dumps(x)
            for x in [
                {"messages": [user("Imported?")], "ideal": "Yes."},
                {"messages": [user("Rated?"), {"role": "assistant", "content": "Indeed."}], "rating": "good"},
                {"messages": [user("Pair?")], "preferred": "P", "rejected": "R"},
            ]
        ).encode(),
    )

    snap = ds.build_from_feedback(db, blobs, acme, heldout_fraction=0.0, min_heldout=0)
    sfts, prefs = everything(snap)
    assert sfts == pairs(
        ("Capital of France?", "Paris."), ("Colour of the sky?", "Blue."), ("Imported?", "Yes."), ("Rated?", "Indeed.")
    )
    assert prefs == {
        ("Colour of the sky?", "Blue.", "Green."),
        ("Greet me", "Hello, nice to meet you!", "Hi."),
        ("Tell a joke", "A pun.", "A long lecture."),
        ("Pair?", "P", "R"),
    }
    assert snap.source == "feedback" and snap.heldout_count == 0


def test_dedup_and_correction_beats_good_rating(db: Database, blobs: BlobStore, acme: str) -> None:
    for answer in ("Paris.", "Paris. ", "Paris."):  # the same answer thrice (whitespace aside)
        record_feedback(
            db, acme, interaction_id=chat_interaction(db, acme, "Capital of France?", answer), rating="good"
        )
    rated = chat_interaction(db, acme, "Capital of Spain?", "Madrid")
    record_feedback(db, acme, interaction_id=rated, rating="good")
    other = chat_interaction(db, acme, "Capital  of Spain?", "Madrid")  # same prompt, normalised
    record_feedback(db, acme, interaction_id=other, correction="Madrid is the capital of Spain.")
    changed = chat_interaction(db, acme, "Capital of Italy?", "Rome")
    record_feedback(db, acme, interaction_id=changed, rating="good")
    record_feedback(db, acme, interaction_id=changed, rating="bad")  # the newest rating counts

    snap = ds.build_from_feedback(db, blobs, acme, heldout_fraction=0.0, min_heldout=0)
    answers = sorted(r.answer for r in (*snap.train_sft, *snap.heldout_sft))
    assert answers == ["Madrid is the capital of Spain.", "Paris."]


def test_model_and_since_filters(db: Database, blobs: BlobStore, acme: str) -> None:
    a = chat_interaction(db, acme, "For A?", "yes", model="bot-a")
    b = chat_interaction(db, acme, "For B?", "yes", model="bot-b")
    record_feedback(db, acme, interaction_id=a, rating="good")
    record_feedback(db, acme, interaction_id=b, rating="good")
    import_feedback_jsonl(db, acme, json.dumps({"messages": [user("Anyone?")], "ideal": "All."}).encode())
    import_feedback_jsonl(
        db, acme, json.dumps({"messages": [user("Only B?")], "ideal": "B.", "model": "bot-b"}).encode()
    )
    snap = ds.build_from_feedback(db, blobs, acme, model="bot-a", heldout_fraction=0.0, min_heldout=0)
    assert {r.prompt[-1]["content"] for r in snap.train_sft} == {"For A?", "Anyone?"}
    assert snap.params["model"] == "bot-a"

    with pytest.raises(TailorError) as err:
        ds.build_from_feedback(db, blobs, acme, since=utcnow())
    assert (err.value.status, err.value.code) == (400, "no_training_data")
    # Imported examples that name no model belong to every model of the tenant.
    only_import = ds.build_from_feedback(db, blobs, acme, model="bot-z", heldout_fraction=0.0, min_heldout=0)
    assert [r.answer for r in only_import.train_sft] == ["All."]
    with pytest.raises(TailorError):
        ds.build_from_feedback(db, blobs, acme, heldout_fraction=1.5)


def test_tenants_see_only_their_feedback(db: Database, blobs: BlobStore, acme: str) -> None:
    beta = create_tenant(db, "beta").id
    record_feedback(db, acme, interaction_id=chat_interaction(db, acme, "Secret?", "Yes."), rating="good")
    with pytest.raises(TailorError) as err:
        ds.build_from_feedback(db, blobs, beta)
    assert err.value.code == "no_training_data"
    snap = ds.build_from_feedback(db, blobs, acme)
    with pytest.raises(TailorError) as err:
        ds.load_snapshot(db, blobs, beta, snap.id)
    assert (err.value.status, err.value.code) == (404, "dataset_not_found")


def test_snapshot_is_reproducible_and_stored_once(db: Database, blobs: BlobStore, acme: str) -> None:
    for i in range(12):
        record_feedback(
            db, acme, interaction_id=chat_interaction(db, acme, f"Question {i}?", f"Answer {i}."), rating="good"
        )
    first = ds.build_from_feedback(db, blobs, acme)
    again = ds.build_from_feedback(db, blobs, acme)
    assert first == again and first.id.startswith("ds-") and len(first.id) == 27
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Dataset)) == 1
        row = s.get(Dataset, first.id)
        assert row is not None and row.tenant_id == acme and row.source == "feedback"
        assert (row.sft_count, row.preference_count, row.heldout_count) == (
            len(first.train_sft),
            0,
            first.heldout_count,
        )
        assert row.storage_key == f"datasets/{acme}/{first.id}.json"
    assert blobs.exists(f"datasets/{acme}/{first.id}.json")
    assert ds.load_snapshot(db, blobs, acme, first.id) == first

    other_params = ds.build_from_feedback(db, blobs, acme, heldout_fraction=0.5)
    assert other_params.id != first.id
    with pytest.raises(TailorError) as err:
        ds.load_snapshot(db, blobs, acme, "ds-unknown")
    assert err.value.status == 404


# --- the split ---------------------------------------------------------------------


def test_split_never_separates_a_prompt_and_is_stable_as_data_grows() -> None:
    records = [sft(f"q{i}", f"a{i}") for i in range(60)] + [sft(f"q{i}", f"other {i}") for i in range(60)]
    records += [PreferenceRecord(prompt=(user(f"q{i}"),), chosen="c", rejected="r") for i in range(60)]
    train, held = ds.split(records, 0.25, 1)
    train_prompts = {ds.prompt_key(r.prompt) for r in train}
    held_prompts = {ds.prompt_key(r.prompt) for r in held}
    assert not train_prompts & held_prompts
    assert 0.1 < len(held_prompts) / 60 < 0.4

    more = records + [sft(f"new {i}", "x") for i in range(100)]
    train2, held2 = ds.split(more, 0.25, 1)
    held2_prompts = {ds.prompt_key(r.prompt) for r in held2}
    old = {ds.prompt_key(r.prompt) for r in records}
    assert held2_prompts & old == held_prompts  # no old prompt changed sides
    assert len(train2) + len(held2) == len(more)


def test_split_minimum_heldout() -> None:
    two = [sft("a", "1"), sft("b", "2")]
    train, held = ds.split(two, 0.0, 1)
    assert len(held) == 1 and len(train) == 1
    assert ds.split([sft("a", "1")], 0.99, 1) == ([sft("a", "1")], [])  # one example: train on it
    same_prompt = [sft("a", "1"), sft("a", "2")]
    assert ds.split(same_prompt, 0.99, 1)[1] == []  # a prompt is never split, training keeps one
    train, held = ds.split([sft(str(i), "x") for i in range(5)], 0.99, 1)
    assert len(train) >= 1 and len(held) >= 1
    assert ds.split(two, 0.0, 0) == (sorted(two, key=lambda r: bucket(ds.prompt_key(r.prompt))), [])


# --- build_from_files -----------------------------------------------------------------


def chat_line(q: str, a: str) -> str:
    return json.dumps({"messages": [user(q), {"role": "assistant", "content": a}]})


def pref_line(q: str) -> str:
    return json.dumps(
        {
            "input": {"messages": [user(q)]},
            "preferred_output": [{"role": "assistant", "content": "y"}],
            "non_preferred_output": [{"role": "assistant", "content": "n"}],
        }
    )


def test_build_from_files(db: Database, blobs: BlobStore, acme: str) -> None:
    lines = [chat_line(f"q{i}", f"a{i}") for i in range(20)] + [chat_line("q0", "a0")]  # one duplicate
    train = files.upload_file(db, blobs, acme, "t.jsonl", "\n".join(lines).encode(), "fine-tune")
    val = files.upload_file(db, blobs, acme, "v.jsonl", chat_line("held", "out").encode(), "fine-tune")

    with_val = ds.build_from_files(db, blobs, acme, train.id, val.id)
    assert len(with_val.train_sft) == 20 and with_val.heldout_sft == (sft("held", "out"),)
    assert with_val.source == "file" and with_val.params["validation_file"] == val.id
    assert ds.build_from_files(db, blobs, acme, train.id, val.id).id == with_val.id

    split = ds.build_from_files(db, blobs, acme, train.id, heldout_fraction=0.3)
    assert len(split.train_sft) + len(split.heldout_sft) == 20 and split.heldout_sft
    assert ds.load_snapshot(db, blobs, acme, split.id) == split

    prefs = files.upload_file(
        db, blobs, acme, "p.jsonl", "\n".join(pref_line(f"p{i}") for i in range(5)).encode(), "fine-tune"
    )
    snap = ds.build_from_files(db, blobs, acme, prefs.id, heldout_fraction=0.2)
    assert len(snap.train_preferences) + len(snap.heldout_preferences) == 5 and not snap.train_sft

    with pytest.raises(TailorError) as err:
        ds.build_from_files(db, blobs, acme, train.id, prefs.id)
    assert (err.value.status, err.value.param) == (400, "validation_file")
    beta = create_tenant(db, "beta").id
    with pytest.raises(TailorError) as err:
        ds.build_from_files(db, blobs, beta, train.id)
    assert (err.value.status, err.value.param) == (404, "training_file")


# --- ratings (KTO) -------------------------------------------------------------------


def ratings_of(snap: ds.Snapshot) -> set[tuple[str, str, bool]]:
    return {(r.prompt[-1]["content"], r.completion, r.label) for r in (*snap.train_ratings, *snap.heldout_ratings)}


def test_thumbs_up_and_down_become_rated_examples(db: Database, blobs: BlobStore, acme: str) -> None:
    up = chat_interaction(db, acme, "Route: printer jam", "QUEUE-HW")
    down = chat_interaction(db, acme, "Route: refund", "Let me tell you about refunds...")
    corrected = chat_interaction(db, acme, "Route: login", "I cannot help.")
    pair = chat_interaction(db, acme, "Route: invoice", "Maybe billing?")
    record_feedback(db, acme, interaction_id=up, rating="good")
    record_feedback(db, acme, interaction_id=down, rating="bad")  # no correction: still a signal
    record_feedback(db, acme, interaction_id=corrected, rating="bad", correction="QUEUE-ACCOUNT")
    record_feedback(db, acme, interaction_id=pair, preferred="QUEUE-BILLING")

    snap = ds.build_from_feedback(db, blobs, acme, heldout_fraction=0.0, min_heldout=0)
    assert ratings_of(snap) == {
        ("Route: printer jam", "QUEUE-HW", True),
        ("Route: refund", "Let me tell you about refunds...", False),
        ("Route: login", "QUEUE-ACCOUNT", True),
        ("Route: login", "I cannot help.", False),
        ("Route: invoice", "QUEUE-BILLING", True),
        ("Route: invoice", "Maybe billing?", False),
    }
    assert snap.params["signals"] == {"ratings_only": 2, "corrections": 1, "preferences": 1}
    again = ds.load_snapshot(db, blobs, acme, snap.id)
    assert again == snap


def test_only_thumbs_down_is_a_dataset_now(db: Database, blobs: BlobStore, acme: str) -> None:
    down = chat_interaction(db, acme, "Route: refund", "A long story.")
    record_feedback(db, acme, interaction_id=down, rating="bad")
    snap = ds.build_from_feedback(db, blobs, acme, heldout_fraction=0.0, min_heldout=0)
    assert not snap.train_sft and ratings_of(snap) == {("Route: refund", "A long story.", False)}


def test_snapshot_ids_without_ratings_are_unchanged() -> None:
    # Old snapshots (no ratings) hash exactly as before: no "ratings" key in their content.
    snap = ds.Snapshot("", "t", "file", (sft("q", "a"),), (), (), ())
    assert "ratings" not in snap.content()["train"] and "ratings" not in snap.content()["heldout"]


def test_rated_file_kind(db: Database, blobs: BlobStore, acme: str) -> None:
    lines = [
        {"messages": [user("Route: printer jam"), {"role": "assistant", "content": "QUEUE-HW"}], "label": True},
        {"messages": [user("Route: refund"), {"role": "assistant", "content": "Long story."}], "label": False},
        {"messages": [user("Route: vpn"), {"role": "assistant", "content": "QUEUE-NET"}], "label": True},
    ]
    data = "\n".join(json.dumps(x) for x in lines).encode()
    info = files.upload_file(db, blobs, acme, "rated.jsonl", data, files.PURPOSE)
    assert info.kind == "rated"
    snap = ds.build_from_files(db, blobs, acme, info.id, heldout_fraction=0.0, min_heldout=0)
    assert ratings_of(snap) == {
        ("Route: printer jam", "QUEUE-HW", True),
        ("Route: refund", "Long story.", False),
        ("Route: vpn", "QUEUE-NET", True),
    }
    bad_label = {"messages": lines[0]["messages"], "label": "yes"}
    no_answer = {"messages": [user("Route: x")], "label": True}
    for broken in (bad_label, no_answer):
        with pytest.raises(TailorError) as err:
            files.upload_file(db, blobs, acme, "bad.jsonl", json.dumps(broken).encode(), files.PURPOSE)
        assert err.value.status == 400 and "line 1" in err.value.message
