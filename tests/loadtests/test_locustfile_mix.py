"""The locustfile's traffic, without a server or locust (tests.loadtests.locust_fakes).

Zipf weights; short and long prompt shapes; the per-request mix drawn by `TenantClient.chat`
with a seeded RNG (model popularity with its long tail, stream share, long-prompt share,
feedback share, max_tokens range, request bodies for streamed and plain chat); tenants dealt
round-robin and loaded from --tenants-file or GET /v1/models.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.loadtests.locust_fakes import (
    TENANTS,
    FakeClient,
    Locustfile,
    make_user,
    ok_responder,
    options,
    read_jsonl,
    write_tenants,
)

# --- locustfile: prompts and weights --------------------------------------------------------


def test_zipf_weights_are_one_over_rank_to_the_power_s(lf: Locustfile) -> None:
    assert lf.module.zipf_weights(4, 1.0) == pytest.approx([1.0, 0.5, 1 / 3, 0.25])
    assert lf.module.zipf_weights(3, 2.0) == pytest.approx([1.0, 0.25, 1 / 9])
    assert lf.module.zipf_weights(3, 0.0) == [1.0, 1.0, 1.0]
    assert lf.module.zipf_weights(0, 1.2) == []


def test_short_messages_are_one_question_with_an_optional_system_prompt(lf: Locustfile) -> None:
    m = lf.module
    shapes: Counter[int] = Counter()
    for seed in range(200):
        messages = m.short_messages(random.Random(seed))
        assert messages[-1]["role"] == "user" and messages[-1]["content"] in m.SHORT_PROMPTS
        if len(messages) == 2:
            assert messages[0]["role"] == "system" and messages[0]["content"] in m.SYSTEM_PROMPTS
        else:
            assert len(messages) == 1
        assert sum(len(x["content"]) for x in messages) < 200
        shapes[len(messages)] += 1
    assert shapes[1] > 60 and shapes[2] > 60  # about half each


def test_long_messages_are_a_report_to_summarise_or_a_conversation(lf: Locustfile) -> None:
    m = lf.module
    kinds: Counter[str] = Counter()
    paragraph_counts: set[int] = set()
    turn_counts: set[int] = set()
    for seed in range(200):
        messages = m.long_messages(random.Random(seed))
        assert messages[0]["role"] == "system"
        assert messages[-1]["role"] == "user"  # the model has something to answer
        assert sum(len(x["content"]) for x in messages) > 500  # much longer than any short prompt
        if len(messages) == 2:
            kinds["report"] += 1
            assert messages[0]["content"] == m.SYSTEM_PROMPTS[0]
            *paragraphs, ask = messages[1]["content"].split("\n\n")
            assert all(p in m._PARAGRAPHS for p in paragraphs)
            assert ask in ("Summarise this report in three bullet points.", "What are the main risks mentioned?")
            paragraph_counts.add(len(paragraphs))
        else:
            kinds["conversation"] += 1
            assert messages[0]["content"] in m.SYSTEM_PROMPTS[1:]
            turns = [(x["role"], x["content"]) for x in messages[1:]]
            twice = list(m._HISTORY[:-1]) * 2 + list(m._HISTORY[-1:])
            assert turns in (list(m._HISTORY), twice)
            # roles alternate: chat templates that insist on it accept every conversation
            assert all(a[0] != b[0] for a, b in zip(turns, turns[1:], strict=False))
            turn_counts.add(len(turns))
    assert kinds["report"] > 60 and kinds["conversation"] > 60
    assert paragraph_counts == set(range(5, 10))
    assert turn_counts == {7, 13}


# --- locustfile: the request mix ------------------------------------------------------------


def test_chat_mix_follows_zipf_popularity_and_the_shares(lf: Locustfile, tmp_path: Path) -> None:
    records = tmp_path / "run" / "records.jsonl"
    opts = options(write_tenants(tmp_path), records_file=str(records))
    lf.events.test_start.fire(environment=SimpleNamespace(parsed_options=opts))
    client = FakeClient(ok_responder())
    user = make_user(lf, opts, client, seed=1234)
    n = 3000
    for _ in range(n):
        user.chat()
    lf.events.test_stop.fire(environment=SimpleNamespace(parsed_options=opts))

    chats = client.chats()
    assert len(chats) == n
    counts = Counter(c.body["model"] for c in chats)
    models = TENANTS[0]["models"]
    weights = [1 / r**1.2 for r in range(1, 5)]
    for model, w in zip(models, weights, strict=True):
        assert counts[model] / n == pytest.approx(w / sum(weights), abs=0.03), model
    assert [counts[m] for m in models] == sorted(counts.values(), reverse=True)  # popularity order

    streamed = [c for c in chats if c.stream]
    assert len(streamed) / n == pytest.approx(0.6, abs=0.03)
    assert all(c.name == "chat stream" and c.body["stream"] is True for c in streamed)
    assert all(c.body["stream_options"] == {"include_usage": True} for c in streamed)
    plain = [c for c in chats if not c.stream]
    assert all(c.name == "chat" and "stream" not in c.body and "stream_options" not in c.body for c in plain)

    max_tokens = [c.body["max_tokens"] for c in chats]
    assert min(max_tokens) == 8 and max(max_tokens) == 48
    assert all(c.body["temperature"] == 0.7 for c in chats)
    assert all(c.headers == {"Authorization": "Bearer sk-acme"} and c.timeout == 180.0 for c in chats)

    lines = read_jsonl(records)
    assert lines[0]["kind"] == "meta" and lines[0]["event"] == "start"
    assert lines[-1]["kind"] == "meta" and lines[-1]["event"] == "stop" and lines[-1]["interrupted"] == 0
    chat_records = [r for r in lines if r["kind"] == "chat"]
    assert len(chat_records) == n and all(r["ok"] and r["tenant"] == "acme" for r in chat_records)
    assert sum(r["long"] for r in chat_records) / n == pytest.approx(0.25, abs=0.03)
    assert all(r["base"] == (r["model"] == "Base") for r in chat_records)
    for record, call in zip(chat_records, chats, strict=True):
        assert record["model"] == call.body["model"] and record["stream"] == call.stream
        prompt_chars = sum(len(m["content"]) for m in call.body["messages"])
        if record["long"]:  # a report to summarise (2 messages) or a conversation (8 or 14)
            assert len(call.body["messages"]) in (2, 8, 14) and prompt_chars > 500
        else:
            assert len(call.body["messages"]) in (1, 2) and prompt_chars < 200

    feedback = [p for p in client.posts if p.path == "/v1/feedback"]
    assert len(feedback) / n == pytest.approx(0.3, abs=0.03)
    assert {p.body["rating"] for p in feedback} == {"good", "bad"}
    assert sum(p.body["rating"] == "good" for p in feedback) / len(feedback) == pytest.approx(0.7, abs=0.06)
    feedback_records = [r for r in lines if r["kind"] == "feedback"]
    assert len(feedback_records) == len(feedback) and all(r["ok"] and r["status"] == 201 for r in feedback_records)


def test_shares_of_zero_and_one_are_respected(lf: Locustfile, tmp_path: Path) -> None:
    opts = options(write_tenants(tmp_path), stream_share=1.0, long_share=0.0, feedback_share=0.0, max_tokens=16)
    client = FakeClient(ok_responder())
    user = make_user(lf, opts, client)
    for _ in range(200):
        user.chat()
    assert len(client.posts) == 200  # no feedback
    assert all(p.stream and p.body["max_tokens"] in range(8, 17) for p in client.posts)
    assert all(len(p.body["messages"]) <= 2 for p in client.posts)  # short prompts only


def test_max_tokens_below_min_tokens_uses_min_tokens(lf: Locustfile, tmp_path: Path) -> None:
    opts = options(write_tenants(tmp_path), min_tokens=20, max_tokens=4)
    client = FakeClient(ok_responder())
    user = make_user(lf, opts, client)
    for _ in range(20):
        user.chat()
    assert {p.body["max_tokens"] for p in client.chats()} == {20}


def test_wait_time_is_uniform_between_think_min_and_max(lf: Locustfile, tmp_path: Path) -> None:
    user = make_user(lf, options(write_tenants(tmp_path)), FakeClient(ok_responder()))
    waits = [user.wait_time() for _ in range(500)]
    assert all(0.2 <= w <= 1.5 for w in waits)
    assert min(waits) < 0.3 and max(waits) > 1.4
    user.environment.parsed_options.think_max = 0.1  # below think_min: constant think_min
    assert {user.wait_time() for _ in range(10)} == {0.2}


# --- locustfile: tenants --------------------------------------------------------------------


def test_users_are_dealt_round_robin_over_the_tenants_file(lf: Locustfile, tmp_path: Path) -> None:
    tenants_file = write_tenants(tmp_path)
    opts = options(tenants_file)
    first = make_user(lf, opts, FakeClient(ok_responder()))
    tenants_file.unlink()  # read once, by the first user
    second = make_user(lf, opts, FakeClient(ok_responder()))
    third = make_user(lf, opts, FakeClient(ok_responder()))
    assert [u.tenant for u in (first, second, third)] == ["acme", "globex", "acme"]
    assert second.models == ["triage", "Base"] and second.base_model == "Base"
    assert second.headers == {"Authorization": "Bearer sk-globex"}
    assert second.weights == pytest.approx([1.0, 2**-1.2])


def test_without_tenants_file_the_api_key_tenant_gets_adapters_before_the_base_model(lf: Locustfile) -> None:
    # Pinned versions are listed too; the load goes to the names clients use.
    client = FakeClient(ok_responder(), models=["Base", "billing", "billing@v1", "support", "support@v2"])
    tenants = lf.module._load_tenants(options(api_key="sk-one"), client)
    assert tenants == [
        {"tenant": "default", "key": "sk-one", "models": ["billing", "support", "Base"], "base_model": "Base"}
    ]
    assert client.gets == [("/v1/models", {"Authorization": "Bearer sk-one"})]


def test_load_tenants_refuses_an_empty_file_or_no_key(lf: Locustfile, tmp_path: Path) -> None:
    empty = write_tenants(tmp_path, [])
    with pytest.raises(RuntimeError, match="lists no tenants"):
        lf.module._load_tenants(options(empty), FakeClient(ok_responder()))
    with pytest.raises(RuntimeError, match="--tenants-file"):
        lf.module._load_tenants(options(), FakeClient(ok_responder()))
