"""gateway.redaction: typed placeholders for personal data, checksums for cards and IBANs,
OpenAI bodies keeping their shape (examples and hypothesis properties), and redaction on
the way into storage: the interaction log and feedback, per tenant flag or for everyone."""

from __future__ import annotations

import re
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from core.db import Database
from core.models import Feedback, Interaction, Tenant
from gateway.interaction_log import InteractionLog, InteractionRecord
from gateway.redaction import (
    CARD,
    EMAIL,
    IBAN,
    IP,
    PHONE,
    PLACEHOLDERS,
    SSN,
    iban_ok,
    luhn_ok,
    redact_payload,
    redact_text,
)
from gateway.tenants import create_tenant
from tests.dbutil import add_interaction
from tests.gateway.interaction_records import chat_record
from trainer import feedback

# --- examples ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.doe+news@example.co.uk today", f"write to {EMAIL} today"),
        ("Mail: Jürgen_99@mail-server.de.", f"Mail: {EMAIL}."),
        ("visa 4111 1111 1111 1111, amex 3782-822463-10005", f"visa {CARD}, amex {CARD}"),
        ("card:4012888888881881;", f"card:{CARD};"),
        ("IBAN DE89 3704 0044 0532 0130 00 please", f"IBAN {IBAN} please"),
        ("GB82WEST12345698765432", IBAN),
        ("SSN 123-45-6789.", f"SSN {SSN}."),
        ("from 192.168.1.254 and 10.0.0.1.", f"from {IP} and {IP}."),
        ("v6 2001:db8::8a2e:370:7334, loopback ::1, mapped ::ffff:10.0.0.1", f"v6 {IP}, loopback {IP}, mapped {IP}"),
        ("call +1 (415) 555-2671 or +49 30 1234567", f"call {PHONE} or {PHONE}"),
        ("office (415) 555-2671, cell 415.555.2671", f"office {PHONE}, cell {PHONE}"),
        ("Berlin 030 1234567, London 020 7946 0958", f"Berlin {PHONE}, London {PHONE}"),
    ],
)
def test_redacts(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "order 4111 1111 1111 1112 failed",  # Luhn fails: an order number, not a card
        "DE00 ABCD EFGH IJKL MNOP",  # not a valid IBAN
        "dates 01.02.2024 and 2024-01-15, at 10:30:45",
        "amounts 1,234,567.89 and 3.14159, +5 - 3, +1000000 users",
        "version 3.11.7, port 8080, 1.2.3.4.5, 256.1.1.1",
        "std::vector<int> and a::b and dead::beef",
        "ssn-like 000-12-345 and 123-45-678",
        "user@localhost and @handle and a@b",
        "the answer is 42, ids 123456789012",
    ],
)
def test_leaves_lookalikes(text: str) -> None:
    assert redact_text(text) == text


def test_checksums() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89370400440532013000") and iban_ok("GB82 WEST 1234 5698 7654 32")
    assert not iban_ok("DE88370400440532013000") and not iban_ok("DE89")


def test_no_quadratic_blow_up_on_long_runs() -> None:
    # Each would take minutes if a pattern could restart at every position of the run.
    for text in ("a" * 200_000 + "@", "1" * 200_000, "+" + "1" * 100_000, ":" * 100_000 + "1", "a." * 100_000 + "@x"):
        assert redact_text(text) == text


def test_payload_keeps_its_shape() -> None:
    request = {
        "model": "support",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "I am bob@example.com"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function"}]},
        ],
        "prompt": ["card 4111111111111111", [1, 2, 3]],
        "user": "carol@example.org",
        "temperature": 0.2,
        "n": 1,
        "stream": False,
    }
    response = {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "text": "call +1 415 555 2671", "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": "ip 10.1.2.3"}},
            {"index": 2, "delta": {"content": "x@y.io"}},
        ],
        "usage": {"prompt_tokens": 3},
    }
    out = redact_payload(request)
    assert out["messages"][1]["content"][0] == {"type": "text", "text": f"I am {EMAIL}"}
    assert out["messages"][2] == request["messages"][2]
    assert out["prompt"] == [f"card {CARD}", [1, 2, 3]]
    assert out["user"] == EMAIL
    assert {k: v for k, v in out.items() if k not in ("messages", "prompt", "user")} == {
        k: v for k, v in request.items() if k not in ("messages", "prompt", "user")
    }
    redacted = redact_payload(response)
    assert [c.get("text") for c in redacted["choices"]] == [f"call {PHONE}", None, None]
    assert redacted["choices"][1]["message"] == {"role": "assistant", "content": f"ip {IP}"}
    assert redacted["choices"][2]["delta"] == {"content": EMAIL}
    assert redacted["id"] == "chatcmpl-123" and redacted["usage"] == {"prompt_tokens": 3}
    assert request["user"] == "carol@example.org"  # the input is not changed in place


# --- properties -------------------------------------------------------------------------

_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=200)
_noisy = st.text(alphabet=string.ascii_letters + string.digits + " .:-+@()/,_\n", max_size=200)


def _luhn_complete(prefix: str) -> str:
    for check in string.digits:
        if luhn_ok(prefix + check):
            return prefix + check
    raise AssertionError("unreachable")


_cards = st.builds(_luhn_complete, st.text(alphabet=string.digits, min_size=15, max_size=15).map(lambda s: "4" + s[1:]))
_emails = st.builds(
    lambda user, host, tld: f"{user}@{host}.{tld}",
    st.text(alphabet=string.ascii_lowercase + string.digits + "._", min_size=1, max_size=12).filter(
        lambda u: u[0].isalnum()
    ),
    st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=10),
    st.text(alphabet=string.ascii_lowercase, min_size=2, max_size=5),
)


def _grouped(card: str, sep: str) -> str:
    return sep.join(card[i : i + 4] for i in range(0, len(card), 4))


@settings(max_examples=300, deadline=None)
@given(st.one_of(_text, _noisy))
def test_idempotent(text: str) -> None:
    once = redact_text(text)
    assert redact_text(once) == once


@settings(max_examples=300, deadline=None)
@given(_text.filter(lambda t: not any(ch.isdigit() or ch == "@" for ch in t)))
def test_text_without_digits_or_at_is_unchanged(text: str) -> None:
    assert redact_text(text) == text


@settings(max_examples=200, deadline=None)
@given(_cards, st.sampled_from(["", " ", "-"]), _noisy, _noisy)
def test_cards_never_survive(card: str, sep: str, before: str, after: str) -> None:
    text = f"{before} {_grouped(card, sep)} {after}"
    out = redact_text(text)
    assert card not in re.sub(r"[ -]", "", out)
    assert CARD in out or PHONE in out or IBAN in out


@settings(max_examples=200, deadline=None)
@given(_emails, _noisy, _noisy)
def test_emails_never_survive(email: str, before: str, after: str) -> None:
    out = redact_text(f"{before} {email} {after}")
    assert email not in out and EMAIL in out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(_emails, _cards), min_size=1, max_size=5), _noisy)
def test_placeholders_hold_no_personal_data(secrets: list[str], filler: str) -> None:
    out = redact_text(f" {filler} ".join(secrets))
    assert not any(secret in out for secret in secrets)
    assert not any(ch.isdigit() or ch == "@" for ch in "".join(PLACEHOLDERS))
    assert set(re.findall(r"\[[A-Z]+\]", out)) <= set(PLACEHOLDERS)


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), _noisy),
        lambda children: st.one_of(
            st.lists(children, max_size=4), st.dictionaries(st.sampled_from(["content", "text", "role", "x"]), children)
        ),
        max_leaves=20,
    )
)
def test_payload_shape_is_kept(value: Any) -> None:
    def shape(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: shape(x) for k, x in v.items()}
        if isinstance(v, list):
            return [shape(x) for x in v]
        return type(v).__name__

    out = redact_payload({"body": value})
    assert shape(out) == shape({"body": value})


# --- on the way into storage -------------------------------------------------------------

PERSONAL = "I am jane@example.com, card 4111 1111 1111 1111"


def _set_flag(db: Database, tenant_id: str, on: bool) -> None:
    with db.session() as s:
        row = s.get(Tenant, tenant_id)
        assert row is not None
        row.redact_pii = on


def _record(tenant_id: str, i: int) -> InteractionRecord:
    return chat_record(
        f"chatcmpl-{tenant_id}-{i}",
        tenant_id,
        request={"messages": [{"role": "user", "content": PERSONAL}], "temperature": 0.5},
        response_text="Noted: jane@example.com",
        status_code=400,
        error="invalid card 4111 1111 1111 1111",
    )


def _stored(db: Database, tenant_id: str) -> list[Interaction]:
    with db.session() as s:
        return list(s.scalars(select(Interaction).where(Interaction.tenant_id == tenant_id)))


async def test_interactions_are_stored_redacted_for_tenants_that_ask(sqlite_db: Database) -> None:
    private, plain = create_tenant(sqlite_db, "private").id, create_tenant(sqlite_db, "plain").id
    _set_flag(sqlite_db, private, True)
    log = InteractionLog(sqlite_db, batch_size=10, flush_interval_s=30)
    log.start()
    for i in range(3):  # one batch with both tenants in it
        log.record(_record(private, i))
        log.record(_record(plain, i))
    await log.stop()

    redacted = _stored(sqlite_db, private)
    assert len(redacted) == 3
    for row in redacted:
        assert row.request == {
            "messages": [{"role": "user", "content": f"I am {EMAIL}, card {CARD}"}],
            "temperature": 0.5,
        }
        assert (row.response_text, row.error) == (f"Noted: {EMAIL}", f"invalid card {CARD}")
    verbatim = _stored(sqlite_db, plain)
    assert len(verbatim) == 3
    assert all(r.request["messages"][0]["content"] == PERSONAL for r in verbatim)
    assert all(r.response_text == "Noted: jane@example.com" for r in verbatim)


async def test_redact_all_redacts_every_tenant(sqlite_db: Database) -> None:
    plain = create_tenant(sqlite_db, "plain").id
    log = InteractionLog(sqlite_db, redact_all=True)
    log.start()
    log.record(_record(plain, 1))
    await log.stop()
    (row,) = _stored(sqlite_db, plain)
    assert row.request["messages"][0]["content"] == f"I am {EMAIL}, card {CARD}"


def test_feedback_text_is_redacted_when_asked(sqlite_db: Database) -> None:
    tenant = create_tenant(sqlite_db, "acme").id
    iid = add_interaction(
        sqlite_db, tenant, model="m", request={"messages": [{"role": "user", "content": "hi"}]}, response_text="x"
    )
    info = feedback.record_feedback(
        sqlite_db,
        tenant,
        interaction_id=iid,
        correction="Write to jane@example.com",
        preferred="call +1 415 555 2671",
        rejected="call me",
        redact=redact_text,
    )
    assert (info.correction, info.preferred, info.rejected) == (f"Write to {EMAIL}", f"call {PHONE}", "call me")
    line = b'{"messages": [{"role": "user", "content": "I am jane@example.com"}], "correction": "ok 10.0.0.1"}'
    result = feedback.import_feedback_jsonl(sqlite_db, tenant, line, redact=redact_text)
    plain = feedback.record_feedback(sqlite_db, tenant, interaction_id=iid, correction="jane@example.com")
    with sqlite_db.session() as s:
        imported = s.get(Feedback, result.ids[0])
        assert imported is not None
        assert imported.messages == [{"role": "user", "content": f"I am {EMAIL}"}]
        assert imported.correction == f"ok {IP}"
    assert plain.correction == "jane@example.com"
