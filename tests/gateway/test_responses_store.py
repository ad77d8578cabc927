"""gateway.responses.store on SQLite and PostgreSQL: chains read with one recursive query,
tenant scope, retention, redaction, deletion, and input item pages."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import select

from core.db import Database
from core.errors import TailorError
from core.models import Feedback, Interaction, StoredResponse, Tenant
from gateway import privacy
from gateway.responses import items as item_fns
from gateway.responses import store
from gateway.tenants import create_tenant
from tests.openai_schema import validate

NOW = datetime(2026, 12, 9, 12, 0, tzinfo=timezone.utc)


def turn(rid: str, prev: str | None, said: str, answered: str, *, age_days: float = 0, **body: Any) -> store.Turn:
    created = NOW - timedelta(days=age_days)
    output = [item_fns.output_message([answered], item_fns.item_id(), "completed")]
    return store.Turn(
        id=rid,
        model="base",
        created_at=created,
        previous_response_id=prev,
        input_items=item_fns.input_items(said),
        body={"id": rid, "output": output, "metadata": {}, "instructions": None, **body},
    )


def texts(items: list[dict[str, Any]]) -> list[str]:
    return [item_fns.text_of(i) for i in items]


def chain(db: Database, tenant_id: str, n: int, *, prefix: str = "resp_", age_days: float = 0) -> list[str]:
    ids, prev = [], None
    for i in range(n):
        rid = f"{prefix}{i}"
        store.save(db, tenant_id, turn(rid, prev, f"q{i}", f"a{i}", age_days=age_days))
        ids.append(rid)
        prev = rid
    return ids


def test_a_conversation_is_its_chain_oldest_first(db: Database) -> None:
    t = create_tenant(db, "acme").id
    ids = chain(db, t, 4)
    store.save(db, t, turn("resp_branch", ids[1], "other", "b"))  # a branch off turn 1
    turns = store.conversation(db, t, ids[-1], now=NOW)
    assert [x.id for x in turns] == ids
    assert texts(store.context_items(turns)) == ["q0", "a0", "q1", "a1", "q2", "a2", "q3", "a3"]
    branch = store.conversation(db, t, "resp_branch", now=NOW)
    assert [x.id for x in branch] == ["resp_0", "resp_1", "resp_branch"]
    # What a response was generated from: earlier turns whole, then its own input only.
    assert texts(store.items_used(db, t, ids[2], now=NOW)) == ["q0", "a0", "q1", "a1", "q2"]
    for item in store.items_used(db, t, ids[2], now=NOW):
        validate(item, "ItemResource")


def test_lookups_are_tenant_scoped(db: Database) -> None:
    acme, beta = create_tenant(db, "acme").id, create_tenant(db, "beta").id
    ids = chain(db, acme, 2)
    assert store.conversation(db, beta, ids[1], now=NOW) == []
    # A beta turn that names acme's response as its previous one sees nothing of acme.
    store.save(db, beta, turn("resp_b", ids[1], "mine", "ok"))
    assert [x.id for x in store.conversation(db, beta, "resp_b", now=NOW)] == ["resp_b"]
    for call in (store.get, store.items_used, store.delete):
        with pytest.raises(TailorError) as err:
            call(db, beta, ids[0], now=NOW)
        assert err.value.status == 404 and err.value.param == "response_id"
    assert store.get(db, acme, ids[0], now=NOW).id == ids[0]


def test_retention_hides_then_deletes_and_the_chain_stops_there(db: Database) -> None:
    t = create_tenant(db, "short").id
    with db.session() as s:
        row = s.get(Tenant, t)
        assert row is not None
        row.retention_days = 7
    old = chain(db, t, 2, prefix="resp_old", age_days=8)
    store.save(db, t, turn("resp_new", old[-1], "q", "a", age_days=1))
    with pytest.raises(TailorError):
        store.get(db, t, old[0], now=NOW)
    assert store.conversation(db, t, old[-1], now=NOW) == []
    assert [x.id for x in store.conversation(db, t, "resp_new", now=NOW)] == ["resp_new"]

    result = privacy.apply_retention(db, NOW)
    assert result.responses == 2 and result.by_tenant[t]["responses"] == 2
    with db.session() as s:
        assert list(s.scalars(select(StoredResponse.id))) == ["resp_new"]


def test_redacting_tenants_store_redacted_turns(db: Database) -> None:
    t = create_tenant(db, "private").id
    with db.session() as s:
        row = s.get(Tenant, t)
        assert row is not None
        row.redact_pii = True
    saved = turn("resp_1", None, "I am ann@example.com", "Hi ann@example.com", instructions="Mail bob@example.com")
    saved.body["metadata"] = {"who": "carl@example.com"}
    store.save(db, t, saved)
    got = store.get(db, t, "resp_1", now=NOW)
    assert texts(got.input_items + got.output) == ["I am [EMAIL]", "Hi [EMAIL]"]
    assert got.body["instructions"] == "Mail [EMAIL]" and got.body["metadata"] == {"who": "[EMAIL]"}
    assert got.input_items[0]["id"] == saved.input_items[0]["id"]  # structure is kept


def test_delete_removes_the_turn_its_log_content_and_feedback(db: Database) -> None:
    t = create_tenant(db, "acme").id
    ids = chain(db, t, 3)
    with db.session() as s:  # the interaction row of ids[1] (its id is the response id), and feedback on it
        s.add(
            Interaction(
                id=ids[1],
                tenant_id=t,
                endpoint="responses",
                model="base",
                status_code=200,
                request={"messages": [{"role": "user", "content": "q1"}]},
                response_text="a1",
            )
        )
        s.add(Feedback(id="fb_1", tenant_id=t, interaction_id=ids[1], rating="good"))
    assert store.delete(db, t, ids[1], now=NOW) == ids[1]
    with pytest.raises(TailorError):
        store.get(db, t, ids[1], now=NOW)
    with db.session() as s:
        logged = s.get(Interaction, ids[1])
        assert logged is not None and logged.request == {} and logged.response_text is None
        assert s.get(Feedback, "fb_1") is None
    # The later turn stays, without the deleted one in its past.
    assert [x.id for x in store.conversation(db, t, ids[2], now=NOW)] == [ids[2]]


def test_deep_chains_are_refused(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    t = create_tenant(db, "acme").id
    ids = chain(db, t, 4)
    monkeypatch.setattr(store, "MAX_TURNS", 3)
    assert len(store.conversation(db, t, ids[2], now=NOW)) == 3
    with pytest.raises(TailorError) as err:
        store.conversation(db, t, ids[3], now=NOW)
    assert err.value.status == 400 and err.value.param == "previous_response_id"


def test_item_pages() -> None:
    items = [item_fns.input_message("user", [str(i)]) for i in range(5)]
    first = store.item_page(items, after=None, limit=2, order="desc")
    assert texts(first.items) == ["4", "3"] and first.has_more
    rest = store.item_page(items, after=first.items[-1]["id"], limit=5, order="desc")
    assert texts(rest.items) == ["2", "1", "0"] and not rest.has_more
    assert texts(store.item_page(items, after=items[3]["id"], limit=5, order="asc").items) == ["4"]
    for bad in ({"after": "msg_nope", "limit": 2}, {"after": None, "limit": 0}):
        with pytest.raises(TailorError) as err:
            store.item_page(items, order="asc", **bad)  # type: ignore[arg-type]
        assert err.value.status == 400
