"""Unit tests for the locust load test: `loadtests/locustfile.py` and `loadtests/run_load/`.

Covered, without a server, a model or the network:

* locustfile: Zipf weights; short and long prompt shapes; the per-request mix drawn by
  `TenantClient.chat` with a seeded RNG (model popularity with its long tail, stream share,
  long-prompt share, feedback share, max_tokens range, request bodies for streamed and plain
  chat); TTFT and TPOT computed from a fake SSE stream with scripted chunk timings; failure
  handling of plain and streamed requests (HTTP errors, error events, bad JSON, a stream
  without [DONE], a body without choices); feedback posts; tenants dealt round-robin and
  loaded from --tenants-file or GET /v1/models; the records file with its meta lines and the
  `interrupted` count of requests cut off by locust's run time (gevent.GreenletExit).
* run_load: adapter specs and the build cache; tenant setup, warm-up, metering reads and the
  promoter thread against `httpx.MockTransport`; the metering difference; the locust command
  line (Popen faked); reading locust's stats, failures and the records file; the summary
  figures (requests/s, error rate, p50/p95/p99, TTFT/TPOT, per model, cost per 1K requests,
  promotion switches) and its markdown; argument parsing, --help and early exits of `main`.

How locust is kept out of this process: `import locust` runs `gevent.monkey.patch_all()`
(sockets, threads, time.sleep, subprocess become gevent's), which would change every test run
after it in the same session. So:

* `locustfile.py` is executed here from its path under a private module name while
  `sys.modules` maps `locust` and `gevent` to small stand-ins (events with listeners, a
  plain `HttpUser` base class, `task` as the identity, `GreenletExit`); `sys.modules` is
  restored right after, so no real locust or gevent gets imported or patches anything.
  One subprocess test imports the real thing and checks that the stand-ins match it: the
  user class is a locust `HttpUser` with `chat` as its task, `GreenletExit` is a
  BaseException (so `except Exception` in the locustfile does not swallow it), and the
  scenario options parse with the defaults and `TAILOR_LOAD_*` variables the tests assume.
* `run_load.locust_process.parse_timespan` parses locust's --run-time syntax itself (importing locust
  there would monkey-patch run_load's own process); it is also checked in a subprocess.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import httpx
import pytest

from loadtests import launcher, lora_adapters
from loadtests.run_load import cli as load_cli
from loadtests.run_load import locust_process, metering
from loadtests.run_load import promoter as load_promoter
from loadtests.run_load import report as load_report
from loadtests.run_load import results as load_results
from loadtests.run_load import tenants as load_tenants

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
SUBPROCESS_TIMEOUT_S = 60
REAL_HTTPX_CLIENT = httpx.Client  # before any test patches httpx.Client


# --- loading the locustfile without locust --------------------------------------------------


class _Hook:
    """Stand-in for locust's EventHook: listeners, and a log of what was fired."""

    def __init__(self) -> None:
        self.listeners: list[Callable[..., Any]] = []
        self.fired: list[dict[str, Any]] = []

    def add_listener(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        self.listeners.append(handler)
        return handler

    def fire(self, **kwargs: Any) -> None:
        self.fired.append(kwargs)
        for handler in self.listeners:
            handler(**kwargs)


class _GreenletExit(BaseException):
    """Stand-in for gevent.GreenletExit (a BaseException, as the real one)."""


@dataclass
class Locustfile:
    module: Any  # the executed locustfile
    events: SimpleNamespace  # init_command_line_parser, test_start, test_stop, request: _Hook
    greenlet_exit: type[BaseException]


def _stub_modules() -> tuple[ModuleType, ModuleType, SimpleNamespace]:
    events = SimpleNamespace(init_command_line_parser=_Hook(), test_start=_Hook(), test_stop=_Hook(), request=_Hook())
    locust = ModuleType("locust")
    locust.HttpUser = type("HttpUser", (), {})  # type: ignore[attr-defined]
    locust.events = events  # type: ignore[attr-defined]
    locust.task = lambda func: func  # type: ignore[attr-defined]
    gevent = ModuleType("gevent")
    gevent.GreenletExit = _GreenletExit  # type: ignore[attr-defined]
    return locust, gevent, events


@pytest.fixture
def lf() -> Iterator[Locustfile]:
    """A fresh copy of the locustfile (its globals: records, user counter, tenants cache)."""
    locust, gevent, events = _stub_modules()
    saved = {name: sys.modules.get(name) for name in ("locust", "gevent")}
    sys.modules.update(locust=locust, gevent=gevent)
    try:
        spec = importlib.util.spec_from_file_location("_locustfile_under_test", LOCUSTFILE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, previous in saved.items():  # put back exactly what was there (usually nothing)
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    yield Locustfile(module=module, events=events, greenlet_exit=_GreenletExit)
    module.RECORDS.close()


# --- fakes for the user's HTTP client and clock ---------------------------------------------


class FakeClock:
    """`time` for the locustfile: perf_counter() is `now`, moved by the fakes below."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now


class FakeResponse:
    """What locust's `client.post(..., catch_response=True)` yields, as far as the locustfile uses it."""

    def __init__(
        self,
        status_code: int = 200,
        body: Any = None,
        *,
        lines: Sequence[tuple[float, bytes]] = (),
        text: str = "",
        clock: FakeClock | None = None,
    ) -> None:
        self.status_code = status_code
        self._body = body
        self._lines = lines
        self._clock = clock
        self.text = text
        self.request_meta: dict[str, Any] = {"response_time": None, "response_length": None}
        self.outcome: tuple[str, str] | None = None

    def json(self) -> Any:
        if self._body is None:
            raise ValueError("not JSON")
        return self._body

    def iter_lines(self) -> Iterator[bytes]:
        for at, line in self._lines:  # each line arrives at `at` seconds after the request started
            if self._clock is not None:
                self._clock.now = at
            yield line

    def success(self) -> None:
        self.outcome = ("success", "")

    def failure(self, message: Any) -> None:
        self.outcome = ("failure", str(message))

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False


@dataclass
class Post:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    name: str
    stream: bool
    timeout: float
    response: FakeResponse | None = None


@dataclass
class FakeClient:
    respond: Callable[[Post], FakeResponse]
    posts: list[Post] = field(default_factory=list)
    gets: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    models: list[str] = field(default_factory=list)  # GET /v1/models

    def post(
        self,
        path: str,
        *,
        json: dict[str, Any],
        headers: dict[str, str],
        name: str,
        catch_response: bool,
        timeout: float,
        stream: bool = False,
    ) -> FakeResponse:
        assert catch_response
        call = Post(path, copy.deepcopy(json), dict(headers), name, stream, timeout)
        self.posts.append(call)
        call.response = self.respond(call)
        return call.response

    def get(self, path: str, *, headers: dict[str, str], name: str) -> httpx.Response:
        self.gets.append((path, dict(headers)))
        request = httpx.Request("GET", f"http://tailor{path}")
        return httpx.Response(200, json={"data": [{"id": m} for m in self.models]}, request=request)

    def chats(self) -> list[Post]:
        return [p for p in self.posts if p.path == "/v1/chat/completions"]


def sse(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event).encode()


def stream_lines(
    tokens: Sequence[str], *, at: Sequence[float], usage: dict[str, int], done_at: float
) -> list[tuple[float, bytes]]:
    """A chat stream: a role-only chunk, blank and comment lines, one chunk per token, usage, [DONE]."""
    first = (at[0] if at else done_at) / 2
    lines = [
        (first, sse({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"role": "assistant"}}]})),
        (first, b""),
        (first, b": keep-alive"),
    ]
    for token, t in zip(tokens, at, strict=True):
        lines.append((t, sse({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": token}}]})))
    lines.append((done_at, sse({"id": "chatcmpl-1", "choices": [], "usage": usage})))
    lines.append((done_at, b"data: [DONE]"))
    return lines


def options(tenants_file: Path | str = "", **overrides: Any) -> SimpleNamespace:
    """The scenario options with the locustfile's defaults (checked against the real parser below)."""
    values: dict[str, Any] = {
        "tenants_file": str(tenants_file),
        "api_key": "",
        "records_file": "",
        "stream_share": 0.6,
        "long_share": 0.25,
        "feedback_share": 0.3,
        "zipf_s": 1.2,
        "max_tokens": 48,
        "min_tokens": 8,
        "think_min": 0.2,
        "think_max": 1.5,
        "request_timeout": 180.0,
    }
    values.update(overrides)
    return SimpleNamespace(**values)


TENANTS = [
    {"tenant": "acme", "key": "sk-acme", "models": ["support", "Base", "billing", "legal"], "base_model": "Base"},
    {"tenant": "globex", "key": "sk-globex", "models": ["triage", "Base"], "base_model": "Base"},
]


def write_tenants(tmp_path: Path, tenants: list[dict[str, Any]] = TENANTS) -> Path:
    path = tmp_path / "tenants.json"
    path.write_text(json.dumps(tenants))
    return path


def make_user(lf: Locustfile, opts: SimpleNamespace, client: FakeClient, seed: int = 0) -> Any:
    user = lf.module.TenantClient()
    user.environment = SimpleNamespace(parsed_options=opts)
    user.client = client
    user.on_start()
    user.rng = random.Random(seed)  # on_start seeds with the wall clock; tests want repeatable draws
    return user


def ok_responder(clock: FakeClock | None = None) -> Callable[[Post], FakeResponse]:
    """200 for every chat (plain or streamed, 3 tokens), 201 for feedback."""
    counter = iter(range(10**9))

    def respond(call: Post) -> FakeResponse:
        if call.path == "/v1/feedback":
            return FakeResponse(201, {"id": "fb"})
        n = next(counter)
        if call.stream:
            usage = {"prompt_tokens": 20, "completion_tokens": 3}
            return FakeResponse(
                200, lines=stream_lines(["a", "b", "c"], at=[0.1, 0.2, 0.3], usage=usage, done_at=0.4), clock=clock
            )
        body = {
            "id": f"chatcmpl-{n}",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 5},
        }
        return FakeResponse(200, body)

    return respond


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


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


# --- locustfile: streamed requests, TTFT and TPOT -------------------------------------------


@pytest.fixture
def clock(lf: Locustfile, monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(lf.module, "time", fake)
    return fake


def stream_body() -> dict[str, Any]:
    return {"model": "support", "messages": [], "max_tokens": 8, "stream": True}


def test_stream_ttft_and_tpot_come_from_the_chunk_timings(lf: Locustfile, clock: FakeClock, tmp_path: Path) -> None:
    lines = stream_lines(
        ["Hel", "lo", " there", "!"],
        at=[0.2, 0.3, 0.4, 0.45],
        usage={"prompt_tokens": 12, "completion_tokens": 4},
        done_at=0.5,
    )
    client = FakeClient(lambda call: FakeResponse(200, lines=lines, clock=clock))
    user = make_user(lf, options(write_tenants(tmp_path)), client)
    record: dict[str, Any] = {}
    user._stream(stream_body(), record)

    assert record["ok"] is True and record["status"] == 200 and record["id"] == "chatcmpl-1"
    assert record["latency_ms"] == pytest.approx(500.0)  # until [DONE]
    assert record["ttft_ms"] == pytest.approx(200.0)  # the first content chunk, not the role chunk
    assert record["tpot_ms"] == pytest.approx((500.0 - 200.0) / 3)  # (latency - TTFT) / (tokens - 1)
    assert (record["prompt_tokens"], record["completion_tokens"]) == (12, 4)
    response = client.posts[0].response
    assert response is not None and response.outcome == ("success", "")
    assert response.request_meta == {"response_time": pytest.approx(500.0), "response_length": 4}
    assert client.posts[0].stream is True and client.posts[0].name == "chat stream"
    fired = [(f["request_type"], f["name"], f["response_time"], f["response_length"]) for f in lf.events.request.fired]
    assert fired == [
        ("TTFT", "chat stream", pytest.approx(200.0), 4),
        ("TPOT", "chat stream", pytest.approx(100.0), 4),
    ]
    assert all(f["exception"] is None and f["context"] == {"tenant": "acme"} for f in lf.events.request.fired)


def test_stream_with_one_token_has_ttft_but_no_tpot(lf: Locustfile, clock: FakeClock, tmp_path: Path) -> None:
    lines = stream_lines(["x"], at=[0.15], usage={"prompt_tokens": 3, "completion_tokens": 1}, done_at=0.2)
    client = FakeClient(lambda call: FakeResponse(200, lines=lines, clock=clock))
    user = make_user(lf, options(write_tenants(tmp_path)), client)
    record: dict[str, Any] = {}
    user._stream(stream_body(), record)
    assert record["ttft_ms"] == pytest.approx(150.0) and "tpot_ms" not in record
    assert [f["request_type"] for f in lf.events.request.fired] == ["TTFT"]


def test_stream_without_content_has_neither_ttft_nor_tpot(lf: Locustfile, clock: FakeClock, tmp_path: Path) -> None:
    lines = stream_lines([], at=[], usage={"prompt_tokens": 3, "completion_tokens": 0}, done_at=0.2)
    client = FakeClient(lambda call: FakeResponse(200, lines=lines, clock=clock))
    user = make_user(lf, options(write_tenants(tmp_path)), client)
    record: dict[str, Any] = {}
    user._stream(stream_body(), record)
    assert record["ok"] is True and record["completion_tokens"] == 0
    assert "ttft_ms" not in record and "tpot_ms" not in record and lf.events.request.fired == []


@pytest.mark.parametrize(
    ("response_kwargs", "error", "latency_ms"),
    [
        (
            {"status_code": 429, "body": {"error": {"message": "rate limit exceeded", "type": "rate_limit"}}},
            "HTTP 429: rate limit exceeded",
            300.0,
        ),
        ({"status_code": 502, "text": "Bad Gateway"}, "HTTP 502: Bad Gateway", 300.0),
        (
            {"lines": [(0.4, sse({"id": "c", "choices": []})), (0.7, sse({"error": {"message": "engine died"}}))]},
            "error event: {'message': 'engine died'}",
            700.0,
        ),
        ({"lines": [(0.4, b"data: {not json")]}, "JSONDecodeError: ", 400.0),
        (
            {"lines": [(0.9, sse({"id": "c", "choices": [{"delta": {"content": "a"}}]}))]},
            "stream ended without [DONE]",
            900.0,
        ),
    ],
    ids=["http-error-json", "http-error-text", "error-event", "bad-json", "no-done"],
)
def test_stream_failures_are_reported_with_their_latency(
    lf: Locustfile, clock: FakeClock, tmp_path: Path, response_kwargs: dict[str, Any], error: str, latency_ms: float
) -> None:
    def respond(call: Post) -> FakeResponse:
        clock.now = 0.3  # headers (or the whole error body) after 300 ms
        return FakeResponse(**response_kwargs, clock=clock)

    client = FakeClient(respond)
    user = make_user(lf, options(write_tenants(tmp_path)), client)
    record: dict[str, Any] = {}
    user._stream(stream_body(), record)
    assert record["ok"] is False and record["status"] == response_kwargs.get("status_code", 200)
    assert record["error"].startswith(error)
    assert len(record["error"]) <= 300
    assert record["latency_ms"] == pytest.approx(latency_ms)  # until the failure was seen
    response = client.posts[0].response
    assert response is not None and response.outcome == ("failure", record["error"])
    assert response.request_meta["response_time"] == record["latency_ms"]
    assert "ttft_ms" not in record and lf.events.request.fired == []


def test_failed_stream_is_recorded_and_gets_no_feedback(lf: Locustfile, clock: FakeClock, tmp_path: Path) -> None:
    records = tmp_path / "records.jsonl"
    opts = options(write_tenants(tmp_path), stream_share=1.0, feedback_share=1.0, records_file=str(records))
    lf.module.RECORDS.open(opts.records_file)
    client = FakeClient(lambda call: FakeResponse(500, {"error": {"message": "boom"}}))
    user = make_user(lf, opts, client)
    user.chat()
    assert len(client.posts) == 1  # no feedback on a failed request
    [record] = read_jsonl(records)
    assert record["kind"] == "chat" and record["ok"] is False and record["status"] == 500
    assert record["error"] == "HTTP 500: boom"


# --- locustfile: plain requests and feedback ------------------------------------------------


def test_plain_request_records_latency_tokens_and_id(lf: Locustfile, clock: FakeClock, tmp_path: Path) -> None:
    def respond(call: Post) -> FakeResponse:
        clock.now = 0.25
        body = {"id": "chatcmpl-7", "choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 9}}
        return FakeResponse(200, body)

    client = FakeClient(respond)
    user = make_user(lf, options(write_tenants(tmp_path)), client)
    record: dict[str, Any] = {}
    user._plain({"model": "Base", "messages": []}, record)
    assert record == {
        "latency_ms": pytest.approx(250.0),
        "status": 200,
        "id": "chatcmpl-7",
        "prompt_tokens": 9,
        "completion_tokens": 0,  # missing in usage: 0, not an error
        "ok": True,
    }
    assert client.posts[0].name == "chat" and client.posts[0].stream is False
    assert client.posts[0].response is not None and client.posts[0].response.outcome == ("success", "")


@pytest.mark.parametrize(
    ("response", "error", "failure"),
    [
        (FakeResponse(200, {"id": "c", "choices": []}), "bad response body: no choices in the response", None),
        (FakeResponse(200, {"choices": [{}]}), "bad response body: 'id'", None),
        (FakeResponse(200, None, text="<html>"), "bad response body: not JSON", None),
        (
            FakeResponse(404, {"error": {"message": "model 'x' not found"}}),
            "model 'x' not found",
            "HTTP 404: model 'x' not found",
        ),
        (FakeResponse(500, None, text="x" * 500), "x" * 200, "HTTP 500: " + "x" * 200),
    ],
    ids=["no-choices", "no-id", "not-json", "http-error", "long-error-text"],
)
def test_plain_request_failures(
    lf: Locustfile, tmp_path: Path, response: FakeResponse, error: str, failure: str | None
) -> None:
    client = FakeClient(lambda call: response)
    user = make_user(lf, options(write_tenants(tmp_path)), client)
    record: dict[str, Any] = {}
    user._plain({"model": "Base", "messages": []}, record)
    # the record keeps the message (its status is in record["status"]); locust's failure names the status
    assert record["ok"] is False and record["error"] == error and record["status"] == response.status_code
    assert response.outcome == ("failure", failure or error)


def test_feedback_posts_the_completion_id_and_records_the_outcome(lf: Locustfile, tmp_path: Path) -> None:
    records = tmp_path / "records.jsonl"
    lf.module.RECORDS.open(str(records))
    statuses = iter([201, 422])
    client = FakeClient(lambda call: FakeResponse(next(statuses), {"error": {"message": "unknown interaction"}}))
    user = make_user(lf, options(write_tenants(tmp_path)), client)
    user._feedback("chatcmpl-1")
    user._feedback("chatcmpl-2")
    assert [(p.path, p.name, p.body["interaction_id"]) for p in client.posts] == [
        ("/v1/feedback", "feedback", "chatcmpl-1"),
        ("/v1/feedback", "feedback", "chatcmpl-2"),
    ]
    assert all(p.body["rating"] in ("good", "bad") for p in client.posts)
    outcomes = [p.response.outcome for p in client.posts if p.response is not None]
    assert outcomes == [("success", ""), ("failure", "HTTP 422: unknown interaction")]
    assert [(r["kind"], r["tenant"], r["ok"], r["status"]) for r in read_jsonl(records)] == [
        ("feedback", "acme", True, 201),
        ("feedback", "acme", False, 422),
    ]


# --- locustfile: records and the end of the run ---------------------------------------------


def test_request_cut_off_by_the_run_time_is_counted_as_interrupted(lf: Locustfile, tmp_path: Path) -> None:
    records = tmp_path / "nested" / "dir" / "records.jsonl"
    opts = options(write_tenants(tmp_path), records_file=str(records))
    lf.events.test_start.fire(environment=SimpleNamespace(parsed_options=opts))

    def cut_off(call: Post) -> FakeResponse:
        assert lf.module.RECORDS.in_flight == 1
        raise lf.greenlet_exit()

    user = make_user(lf, opts, FakeClient(cut_off))
    with pytest.raises(lf.greenlet_exit):
        user.chat()
    assert lf.module.RECORDS.in_flight == 0 and lf.module.RECORDS.interrupted == 1
    lf.events.test_stop.fire(environment=SimpleNamespace(parsed_options=opts))

    lines = read_jsonl(records)
    assert [(r["kind"], r["event"]) for r in lines] == [("meta", "start"), ("meta", "stop")]  # no chat record
    assert lines[1]["interrupted"] == 1 and lines[1]["t"] >= lines[0]["t"]
    # run_load reads the same file: meta by event, the rest as records
    recs, meta = load_results.read_records(records)
    assert recs == [] and set(meta) == {"start", "stop"} and meta["stop"]["interrupted"] == 1


def test_records_without_a_file_are_not_written(lf: Locustfile, tmp_path: Path) -> None:
    lf.events.test_start.fire(environment=SimpleNamespace(parsed_options=None))
    user = make_user(lf, options(write_tenants(tmp_path)), FakeClient(ok_responder()))
    user.chat()  # no error: writing is a no-op
    lf.events.test_stop.fire(environment=SimpleNamespace(parsed_options=None))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tenants.json"]


def test_error_text_prefers_the_openai_error_message(lf: Locustfile) -> None:
    error_text = lf.module._error_text
    assert error_text(FakeResponse(400, {"error": {"message": "bad"}})) == "bad"
    assert error_text(FakeResponse(400, {"detail": "other shape"}, text="raw body")) == "raw body"
    assert error_text(SimpleNamespace(json=lambda: {}, text="", error="ConnectionError")) == "ConnectionError"
    assert error_text(FakeResponse(400, {"error": {"message": "m" * 300}})) == "m" * 200


def test_loading_the_locustfile_here_leaves_no_stand_in_and_patches_nothing(lf: Locustfile) -> None:
    assert getattr(sys.modules.get("locust"), "events", None) is not lf.events
    assert getattr(sys.modules.get("gevent"), "GreenletExit", None) is not _GreenletExit
    assert lf.module.gevent.GreenletExit is _GreenletExit  # the module keeps the stand-in it ran with
    assert socket.socket.__module__ == "socket" and time.sleep.__module__ == "time"  # not gevent's


def test_the_locust_stand_ins_match_real_locust() -> None:
    code = r"""
import json, os
from locust import HttpUser
from locust.argument_parser import get_parser
import gevent
import loadtests.locustfile as lf

parser = get_parser(default_config_files=[])
defaults = vars(parser.parse_args(["-f", "loadtests/locustfile.py"]))
os.environ.update({"TAILOR_LOAD_STREAM_SHARE": "0.9", "TAILOR_LOAD_MAX_TOKENS": "64", "TAILOR_LOAD_TENANTS": "t.json"})
from_env = vars(get_parser(default_config_files=[]).parse_args(["-f", "loadtests/locustfile.py", "--zipf-s", "2"]))
keys = ["tenants_file", "api_key", "records_file", "stream_share", "long_share", "feedback_share", "zipf_s",
        "max_tokens", "min_tokens", "think_min", "think_max", "request_timeout"]
print(json.dumps({
    "is_http_user": issubclass(lf.TenantClient, HttpUser),
    "tasks": [t.__name__ for t in lf.TenantClient.tasks],
    "greenlet_exit_is_base_exception": issubclass(gevent.GreenletExit, BaseException),
    "greenlet_exit_is_exception": issubclass(gevent.GreenletExit, Exception),
    "defaults": {k: defaults[k] for k in keys},
    "from_env": {k: from_env[k] for k in ("stream_share", "max_tokens", "tenants_file", "zipf_s")},
}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["is_http_user"] is True
    assert result["tasks"] == ["chat"]
    assert result["greenlet_exit_is_base_exception"] is True and result["greenlet_exit_is_exception"] is False
    assert result["defaults"] == vars(options())
    assert result["from_env"] == {"stream_share": 0.9, "max_tokens": 64, "tenants_file": "t.json", "zipf_s": 2.0}


# --- run_load: adapters ---------------------------------------------------------------------


def test_adapter_specs_cycle_the_shapes_with_distinct_seeds() -> None:
    specs = [lora_adapters.adapter_spec(i) for i in range(6)]
    assert [s.dirname for s in specs] == [
        "r8-qv-s1000",
        "r4-qkvo-s1001",
        "r8-gud-s1002",
        "r4-qvd-s1003",
        "r8-qv-s1004",
        "r4-qkvo-s1005",
    ]
    assert len(set(specs)) == 6


def test_build_adapters_reuses_a_complete_cache_without_loading_a_model(tmp_path: Path) -> None:
    specs = [lora_adapters.adapter_spec(i) for i in range(3)]
    for s in specs:
        (tmp_path / s.dirname).mkdir()
        (tmp_path / s.dirname / "adapter_model.safetensors").write_bytes(b"")
    paths = lora_adapters.build_adapters(specs, tmp_path, tmp_path / "no-such-model")
    assert paths == {s: tmp_path / s.dirname for s in specs}


# --- run_load: setup through the admin API --------------------------------------------------


@pytest.fixture
def patched_httpx(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[httpx.Request], httpx.Response]], None]:
    """Route run_load's own httpx.Client(...) and httpx.get(...) through a MockTransport handler."""
    real_client = REAL_HTTPX_CLIENT

    def install(handler: Callable[[httpx.Request], httpx.Response]) -> None:
        transport = httpx.MockTransport(handler)

        def client(**kwargs: Any) -> httpx.Client:
            return real_client(transport=transport, **kwargs)

        def get(url: str, **kwargs: Any) -> httpx.Response:
            with real_client(transport=transport) as c:
                return c.get(url, **kwargs)

        monkeypatch.setattr(httpx, "Client", client)
        monkeypatch.setattr(httpx, "get", get)

    return install


def admin_client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.Client:
    return REAL_HTTPX_CLIENT(
        base_url="http://tailor", headers={"Authorization": "Bearer adm"}, transport=httpx.MockTransport(handler)
    )


def test_setup_tenants_registers_adapters_in_popularity_order(
    tmp_path: Path, patched_httpx: Callable[[Callable[[httpx.Request], httpx.Response]], None]
) -> None:
    calls: list[tuple[str, str, Any]] = []
    versions: Counter[str] = Counter()

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        calls.append((request.method, request.url.path, body))
        path = request.url.path
        if path == "/v1/models":
            assert request.headers["Authorization"] == "Bearer key-load-T-0"
            return httpx.Response(200, json={"data": [{"id": "Base"}, {"id": "other"}]})
        assert request.headers["Authorization"] == "Bearer adm"
        if path == "/admin/tenants":
            return httpx.Response(201, json={"name": body["name"]})
        if path.endswith("/keys"):
            return httpx.Response(201, json={"key": "key-" + path.split("/")[3]})
        if path.endswith("/adapters/register"):
            versions[path + body["name"]] += 1
            n = versions[path + body["name"]]
            return httpx.Response(201, json={"versions": [{"version": v} for v in range(1, n + 1)]})
        return httpx.Response(404)

    patched_httpx(handler)
    specs = [lora_adapters.adapter_spec(i) for i in range(7)]
    paths = {s: tmp_path / s.dirname for s in specs}
    with admin_client(handler) as admin:
        tenants = load_tenants.setup_tenants(
            admin,
            tenants=2,
            adapters_per_tenant=3,
            paths=paths,
            url="http://tailor",
            run_tag="T",
            promote_second=paths[specs[6]],
        )
    assert [asdict(t) for t in tenants] == [
        {
            "tenant": "load-T-0",
            "key": "key-load-T-0",
            "models": ["support", "Base", "billing", "legal"],
            "base_model": "Base",
        },
        {
            "tenant": "load-T-1",
            "key": "key-load-T-1",
            "models": ["support", "Base", "billing", "legal"],
            "base_model": "Base",
        },
    ]
    registrations = [(p.split("/")[3], b["name"], b["path"], b["activate"]) for m, p, b in calls if "register" in p]
    assert registrations == [
        ("load-T-0", "support", str(paths[specs[0]]), True),
        ("load-T-0", "billing", str(paths[specs[1]]), True),
        ("load-T-0", "legal", str(paths[specs[2]]), True),
        ("load-T-0", "support", str(paths[specs[6]]), True),  # the second version, to flip during load
        ("load-T-1", "support", str(paths[specs[3]]), True),
        ("load-T-1", "billing", str(paths[specs[4]]), True),
        ("load-T-1", "legal", str(paths[specs[5]]), True),
    ]
    assert sum(1 for _, p, _ in calls if p == "/v1/models") == 1  # the base model's name is asked once


def test_setup_tenants_names_adapters_past_the_list_and_stops_on_an_error(
    tmp_path: Path, patched_httpx: Callable[[Callable[[httpx.Request], httpx.Response]], None]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "Base"}]})
        if path.endswith("/keys"):
            return httpx.Response(201, json={"key": "k"})
        if path.endswith("/register") and json.loads(request.content)["name"] == "adapter-9":
            return httpx.Response(409, text="already registered")
        return httpx.Response(201, json={})

    patched_httpx(handler)
    paths = {lora_adapters.adapter_spec(i): tmp_path / str(i) for i in range(10)}
    with admin_client(handler) as admin:
        [tenant] = load_tenants.setup_tenants(
            admin, tenants=1, adapters_per_tenant=9, paths=paths, url="http://tailor", run_tag="x", promote_second=None
        )
        assert tenant.models == ["support", "Base", *load_tenants.ADAPTER_NAMES[1:], "adapter-8"]
        with pytest.raises(RuntimeError, match=r"registering load-y-0/adapter-9 failed: HTTP 409 already registered"):
            load_tenants.setup_tenants(
                admin, tenants=1, adapters_per_tenant=10, paths=paths, url="http://t", run_tag="y", promote_second=None
            )


def test_warm_up_sends_one_token_per_tenant_and_model(
    patched_httpx: Callable[[Callable[[httpx.Request], httpx.Response]], None],
) -> None:
    seen: list[tuple[str, str, int]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.headers["Authorization"], body["model"], body["max_tokens"]))
        if body["model"] == "broken":
            return httpx.Response(503, text="adapter failed to load")
        return httpx.Response(200, json={"choices": []})

    patched_httpx(handler)
    tenants = [
        load_tenants.TenantSetup("a", "ka", ["support", "Base"], "Base"),
        load_tenants.TenantSetup("b", "kb", ["Base"], "Base"),
    ]
    load_tenants.warm_up("http://tailor", tenants)
    assert seen == [("Bearer ka", "support", 1), ("Bearer ka", "Base", 1), ("Bearer kb", "Base", 1)]
    with pytest.raises(RuntimeError, match="warm-up c/broken: HTTP 503 adapter failed to load"):
        load_tenants.warm_up("http://tailor", [load_tenants.TenantSetup("c", "kc", ["broken"], "Base")])


# --- run_load: metering ---------------------------------------------------------------------


def test_fetch_usage_queries_the_day_range_per_tenant_and_concatenates() -> None:
    queries: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/admin/usage"
        queries.append(dict(request.url.params))
        return httpx.Response(200, json={"data": [{"model": "m", "tenant": request.url.params.get("tenant")}]})

    with admin_client(handler) as admin:
        body, note = metering.fetch_usage(admin, "2025-01-01", "2025-01-02", ["t1", "t2"])
        assert note == "" and body == {"data": [{"model": "m", "tenant": "t1"}, {"model": "m", "tenant": "t2"}]}
        body, note = metering.fetch_usage(admin, "2025-01-01", "2025-01-01")
        assert note == "" and body == {"data": [{"model": "m", "tenant": None}]}
    base = {"since": "2025-01-01", "group_by": "model", "format": "json"}
    assert queries == [
        {**base, "until": "2025-01-02", "tenant": "t1"},
        {**base, "until": "2025-01-02", "tenant": "t2"},
        {**base, "until": "2025-01-01"},
    ]


@pytest.mark.parametrize(
    ("respond", "tenants", "note"),
    [
        (lambda r: httpx.Response(404), (), "GET /admin/usage: 404 (no metering route on this gateway)"),
        (lambda r: httpx.Response(404, text="no tenant"), ("t",), "GET /admin/usage: HTTP 404 no tenant"),
        (lambda r: httpx.Response(500, text="oops"), (), "GET /admin/usage: HTTP 500 oops"),
        (lambda r: httpx.Response(200, json={"rows": []}), (), "GET /admin/usage: unexpected body ('data')"),
        (lambda r: httpx.Response(200, text="not json"), (), "GET /admin/usage: unexpected body ("),
    ],
    ids=["no-route", "tenant-404", "server-error", "no-data", "not-json"],
)
def test_fetch_usage_says_why_there_is_no_metering(
    respond: Callable[[httpx.Request], httpx.Response], tenants: tuple[str, ...], note: str
) -> None:
    with admin_client(respond) as admin:
        body, why = metering.fetch_usage(admin, "d", "d", tenants)
    assert body is None and why.startswith(note)


def test_fetch_usage_survives_a_connection_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with admin_client(refuse) as admin:
        body, why = metering.fetch_usage(admin, "d", "d")
    assert body is None and why == "GET /admin/usage failed: connection refused"


def test_usage_delta_subtracts_before_from_after_per_model() -> None:
    before = {
        "data": [
            {"model": "Base", "requests": 10, "errors": 1, "prompt_tokens": 100, "completion_tokens": 50, "cost": 0.01},
            {"model": "idle", "requests": 4, "cost": 0.2},
        ]
    }
    after = {
        "data": [
            # two rows for one model (e.g. two tenants): summed
            {
                "model": "Base",
                "requests": 40,
                "errors": 1,
                "prompt_tokens": 500,
                "completion_tokens": 250,
                "cost": 0.02,
            },
            {
                "model": "Base",
                "requests": "20",
                "errors": None,
                "prompt_tokens": 100,
                "completion_tokens": 50,
                "cost": 0.015,
            },
            {"model": "support", "requests": 150, "client_closed": 2, "completion_tokens": 900, "cost": "0.45"},
            {"model": "idle", "requests": 4, "cost": 0.2},  # unchanged: left out
            {"model": "junk", "requests": "n/a"},
        ]
    }
    delta = metering.usage_delta(before, after)
    assert set(delta["per_model"]) == {"Base", "support"}
    assert delta["per_model"]["Base"] == pytest.approx(
        {"requests": 50, "errors": 0, "client_closed": 0, "prompt_tokens": 500, "completion_tokens": 250, "cost": 0.025}
    )
    assert delta["per_model"]["support"]["requests"] == 150 and delta["per_model"]["support"]["client_closed"] == 2
    assert delta["totals"] == pytest.approx(
        {
            "requests": 200,
            "errors": 0,
            "client_closed": 2,
            "prompt_tokens": 500,
            "completion_tokens": 1150,
            "cost": 0.475,
        }
    )
    assert metering.usage_delta(None, after)["totals"]["requests"] == 214  # no before: everything after


# --- run_load: promotion during load --------------------------------------------------------


def test_promoter_flips_between_versions_and_recovers_from_a_failed_switch(
    patched_httpx: Callable[[Callable[[httpx.Request], httpx.Response]], None],
) -> None:
    promoter = load_promoter.Promoter("http://tailor", "adm", "acme", "support", interval_s=0.001)
    base = "/admin/tenants/acme/adapters/support"
    posts: list[tuple[str, Any]] = []
    replies = iter(
        [
            httpx.Response(200, json={"active_version": 1}),
            httpx.Response(200, json={"active_version": 2}),
            httpx.Response(500, text="database is locked"),
            httpx.Response(200, json={"active_version": 2}),
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer adm"
        if request.method == "GET":
            assert request.url.path == base
            return httpx.Response(200, json={"active_version": 1})  # the failed rollback did happen
        posts.append((request.url.path, json.loads(request.content) if request.content else None))
        reply = next(replies, None)
        if reply is None or len(posts) >= 4:
            promoter.stop_event.set()
        return reply or httpx.Response(200, json={"active_version": 2})

    patched_httpx(handler)
    promoter.run()  # in this thread; ends when the handler sets stop_event
    assert posts == [
        (f"{base}/rollback", None),
        (f"{base}/activate", {"version": 2}),
        (f"{base}/rollback", None),
        (f"{base}/activate", {"version": 2}),  # after asking: v1 was active, so activate
    ]
    assert [(s.action, s.status, s.active_after, s.error) for s in promoter.switches] == [
        ("rollback", 200, 1, ""),
        ("activate v2", 200, 2, ""),
        ("rollback", 500, None, "database is locked"),
        ("activate v2", 200, 2, ""),
    ]
    ts = [s.t for s in promoter.switches]
    assert ts == sorted(ts) and all(s.ms >= 0 for s in promoter.switches)


# --- run_load: the locust subprocess --------------------------------------------------------


class FakePopen:
    instances: list[FakePopen] = []

    def __init__(self, cmd: list[str], **kwargs: Any) -> None:
        self.cmd, self.kwargs = cmd, kwargs
        self.signals: list[int] = []
        self.waits: list[float | None] = []
        self.returncode: int | None = None
        self.hang = kwargs["env"].get("HANG") == "1"
        FakePopen.instances.append(self)

    def wait(self, timeout: float | None = None) -> int:
        self.waits.append(timeout)
        if self.hang and not self.signals:
            raise subprocess.TimeoutExpired(self.cmd, timeout or 0)
        self.returncode = 0 if not self.signals else -signal.SIGINT
        return self.returncode

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)

    def kill(self) -> None:  # pragma: no cover - only when SIGINT is ignored
        raise AssertionError("kill not expected")


@pytest.fixture
def fake_popen(monkeypatch: pytest.MonkeyPatch) -> type[FakePopen]:
    FakePopen.instances = []
    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    monkeypatch.setattr(locust_process, "parse_timespan", lambda text: {"30s": 30.0}[text])
    return FakePopen


def test_run_locust_command_line(tmp_path: Path, fake_popen: type[FakePopen]) -> None:
    args = load_cli._parser().parse_args(["--users", "4", "--spawn-rate", "2", "--run-time", "30s"])
    env = {"TAILOR_LOAD_TENANTS": "t.json"}
    rc = locust_process.run_locust(args, "http://127.0.0.1:9", tmp_path, env, ["--stream-share", "0.9"])
    assert rc == 0
    [proc] = fake_popen.instances
    assert proc.cmd == [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locust_process.LOCUSTFILE),
        "--headless",
        "-u",
        "4",
        "-r",
        "2.0",
        "-t",
        "30s",
        "--host",
        "http://127.0.0.1:9",
        "--csv",
        str(tmp_path / "locust"),
        "--html",
        str(tmp_path / "locust.html"),
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--stream-share",
        "0.9",
    ]
    assert proc.kwargs["env"] is env and proc.kwargs["cwd"] == launcher.ROOT
    assert proc.waits == [30.0 + locust_process.LOCUST_GRACE_S] and proc.signals == []
    assert (tmp_path / "locust.log").exists()
    assert locust_process.LOCUSTFILE == LOCUSTFILE


def test_run_locust_interrupts_a_locust_that_overruns(tmp_path: Path, fake_popen: type[FakePopen]) -> None:
    args = load_cli._parser().parse_args(["--run-time", "30s"])
    rc = locust_process.run_locust(args, "http://h", tmp_path, {"HANG": "1"}, [])
    assert rc == -1
    [proc] = fake_popen.instances
    assert proc.signals == [signal.SIGINT] and proc.waits == [150.0, 15]


# --- run_load: reading results --------------------------------------------------------------

STATS_HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
    "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)
STATS_CSV = f"""{STATS_HEADER}
POST,chat,40,1,820,850.5,300,2100,0,0.8,0.02,820,900,950,1000,1200,1500,1800,2000,2100,2100,2100
POST,chat stream,60,2,1900,1950.25,700,4100,30,1.2,0.04,1900,2000,2200,2400,3000,3500,3900,4000,4100,4100,4100
TTFT,chat stream,58,0,210,230.2,90,800,30,1.16,0,210,250,280,300,400,600,700,750,800,800,800
TPOT,chat stream,55,0,45,46.7,30,90,30,1.1,0,45,50,55,60,70,80,85,88,90,90,90
POST,feedback,30,1,12,14.1,5,60,0,0.6,0,12,13,15,16,20,40,50,55,60,60,60
GET,GET models,1,0,5,5,5,5,100,0.02,0,5,5,5,5,5,5,5,5,5,5,5
,Aggregated,244,4,500,700,5,4100,20,4.88,0.06,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A
"""
FAILURES_CSV = """Method,Name,Error,Occurrences,First Seen,Last Seen
POST,chat,HTTP 429: rate | limit,1,1000.1,1000.1
POST,chat stream,stream ended without [DONE],2,1001.0,1040.0
"""


def chat_record(model: str, ok: bool = True, **fields: Any) -> dict[str, Any]:
    return {"kind": "chat", "tenant": "acme", "model": model, "base": model == "Base", "ok": ok, **fields}


RECORDS = [
    {"kind": "meta", "event": "start", "t": 1000.0},
    chat_record("support", latency_ms=100.0, ttft_ms=40.0, tpot_ms=10.0, prompt_tokens=20, completion_tokens=10),
    chat_record("support", latency_ms=300.0, prompt_tokens=30, completion_tokens=20),
    chat_record("support", latency_ms=200.0, ttft_ms=60.0, tpot_ms=12.0, prompt_tokens=25, completion_tokens=30),
    chat_record("support", ok=False, latency_ms=5000.0, completion_tokens=999, error="HTTP 500"),
    chat_record("Base", latency_ms=150.0, prompt_tokens=25, completion_tokens=40),
    {"kind": "feedback", "tenant": "acme", "ok": True, "status": 201, "latency_ms": 12.0},
    {"kind": "meta", "event": "stop", "t": 1050.0, "interrupted": 2},
]
CONFIG: dict[str, Any] = {
    "users": 8,
    "spawn_rate": 4.0,
    "run_time": "60s",
    "tenants": 3,
    "adapters_per_tenant": 3,
    "stream_share": 0.6,
    "long_share": 0.25,
    "feedback_share": 0.3,
    "zipf_s": 1.2,
    "min_tokens": 8,
    "max_tokens": 48,
    "warmup": True,
    "promote_during_load": False,
    "prices": {"Base": {"prompt": 0.0005, "completion": 0.0015}},
}


def write_run(out: Path, *, stats: str = STATS_CSV, records: list[dict[str, Any]] | None = RECORDS) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "locust_stats.csv").write_text(stats)
    (out / "locust_failures.csv").write_text(FAILURES_CSV)
    if records is not None:
        lines = [json.dumps(r) for r in records]
        lines.insert(3, "{truncated line")  # a partly written line is skipped
        (out / "records.jsonl").write_text("\n".join(lines) + "\n")
    return out


METERING = metering.usage_delta(
    {"data": [{"model": "Base", "requests": 10, "cost": 0.01}]},
    {
        "data": [
            {
                "model": "Base",
                "requests": 60,
                "errors": 1,
                "prompt_tokens": 900,
                "completion_tokens": 300,
                "cost": 0.035,
            },
            {"model": "support", "requests": 150, "client_closed": 2, "prompt_tokens": 3000, "cost": 0.45},
        ]
    },
)


def summarize(out: Path, **overrides: Any) -> load_results.Summary:
    kwargs: dict[str, Any] = {
        "started_at": "2025-06-01 12:00:00",
        "target": "http://tailor (given)",
        "config": dict(CONFIG),
        "max_error_rate": 0.05,
        "metering": METERING,
        "metering_note": "",
        "promoter": None,
        "promoted": None,
    }
    kwargs.update(overrides)
    return load_results.summarize(out, **kwargs)


def test_read_stats_parses_locust_csv_and_skips_the_aggregated_row(tmp_path: Path) -> None:
    rows = load_results.read_stats(write_run(tmp_path) / "locust_stats.csv")
    assert [(r.type, r.name) for r in rows] == [
        ("POST", "chat"),
        ("POST", "chat stream"),
        ("TTFT", "chat stream"),
        ("TPOT", "chat stream"),
        ("POST", "feedback"),
        ("GET", "GET models"),
    ]
    stream = rows[1]
    assert (stream.requests, stream.failures, stream.median, stream.mean, stream.rps) == (60, 2, 1900, 1950.25, 1.2)
    assert (stream.p50, stream.p95, stream.p99) == (1900.0, 3500.0, 4000.0)


def test_read_stats_turns_na_and_nan_into_none(tmp_path: Path) -> None:
    path = tmp_path / "stats.csv"
    path.write_text(f"{STATS_HEADER}\nPOST,chat,0,0,N/A,nan,0,0,0,,0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A\n")
    [row] = load_results.read_stats(path)
    assert (row.median, row.mean, row.p50, row.p95, row.p99, row.rps) == (None, None, None, None, None, 0.0)
    assert (
        load_results._float("12.5") == 12.5 and load_results._float(None) is None and load_results._float("nan") is None
    )


def test_read_failures_and_records(tmp_path: Path) -> None:
    out = write_run(tmp_path)
    assert load_results.read_failures(out / "locust_failures.csv") == [
        ("chat", "HTTP 429: rate | limit", 1),
        ("chat stream", "stream ended without [DONE]", 2),
    ]
    assert load_results.read_failures(out / "missing.csv") == []
    records, meta = load_results.read_records(out / "records.jsonl")
    assert len(records) == 6 and meta["start"]["t"] == 1000.0 and meta["stop"]["interrupted"] == 2
    assert load_results.read_records(out / "missing.jsonl") == ([], {})


def test_pct_is_the_nearest_rank_percentile() -> None:
    values = [float(v) for v in range(10, 0, -1)]  # unsorted on purpose
    assert load_results._pct(values, 0.5) == 5.0
    assert load_results._pct(values, 0.95) == 10.0
    assert load_results._pct(values, 0.99) == 10.0
    assert load_results._pct(values, 0.0) == 1.0
    assert load_results._pct([7.0], 0.5) == 7.0
    assert load_results._pct([], 0.5) is None


def test_ms_formats_large_values_without_decimals() -> None:
    assert [load_report._ms(x) for x in (None, 0, 45.04, 99.96, 100, 1234.5, 12345)] == [
        "–",
        "0.0",
        "45.0",
        "100.0",
        "100",
        "1,234",
        "12,345",
    ]


# --- run_load: the summary ------------------------------------------------------------------


def test_summary_figures(tmp_path: Path) -> None:
    s = summarize(write_run(tmp_path))
    assert s.duration_s == 50.0  # from the records' meta lines
    assert (s.chat_requests, s.chat_failures, s.feedback_requests, s.feedback_failures) == (100, 3, 30, 1)
    assert s.chat_rps == pytest.approx(2.0)
    assert s.total_rps == pytest.approx(2.6)  # chat + feedback; GET models is not counted
    assert s.error_rate == pytest.approx(4 / 130)  # chat and feedback failures
    assert s.passed is True
    assert s.interrupted == 2
    assert (s.prompt_tokens, s.completion_tokens) == (100, 100)  # answered chats only
    assert s.completion_tokens_per_s == pytest.approx(2.0)
    assert s.cost_per_1k_requests == pytest.approx(0.475 / 200 * 1000)
    assert s.latency["latency: chat stream"] == {
        "requests": 60,
        "failures": 2,
        "p50": 1900.0,
        "p95": 3500.0,
        "p99": 4000.0,
        "mean": 1950.25,
    }
    assert s.latency["TTFT: chat stream"]["p95"] == 600.0 and s.latency["TPOT: chat stream"]["p99"] == 88.0
    assert list(s.per_model) == ["support", "Base"]  # most requests first
    assert s.per_model["support"] == {
        "base": False,
        "requests": 4,
        "failures": 1,
        "completion_tokens": 60,
        "p50_latency_ms": 200.0,
        "p50_ttft_ms": 40.0,
        "p50_tpot_ms": 10.0,
    }
    assert s.per_model["Base"]["base"] is True and s.per_model["Base"]["p50_ttft_ms"] is None
    assert s.failures == [("chat", "HTTP 429: rate | limit", 1), ("chat stream", "stream ended without [DONE]", 2)]
    json.dumps(asdict(s), default=str)  # summary.json is written from this


def test_summary_fails_above_the_error_threshold(tmp_path: Path) -> None:
    s = summarize(write_run(tmp_path), max_error_rate=0.02)
    assert s.passed is False
    assert "error rate 3.08% (threshold 2.00%): **FAIL**" in load_report.render(s)


def test_summary_without_requests_is_a_failure(tmp_path: Path) -> None:
    s = summarize(write_run(tmp_path, stats=STATS_HEADER + "\n"))
    assert s.chat_requests == 0 and s.error_rate == 1.0 and s.passed is False
    assert s.chat_rps == 0.0 and s.total_rps == 0.0


def test_summary_without_meta_lines_uses_the_run_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    monkeypatch.setattr(load_results, "parse_timespan", lambda text: asked.append(text) or 80.0)
    s = summarize(write_run(tmp_path, records=None))
    assert asked == ["60s"] and s.duration_s == 80.0
    assert s.chat_rps == pytest.approx(100 / 80) and s.interrupted == 0 and s.per_model == {}


def test_rendered_markdown_has_the_figures(tmp_path: Path) -> None:
    text = load_report.render(summarize(write_run(tmp_path)))
    lines = text.splitlines()
    assert lines[0] == "# Tailor load test, 2025-06-01 12:00:00"
    expected = [
        "- target: http://tailor (given)",
        "| chat requests/s (completed) | 2.00 |",
        "| all requests/s (chat + feedback) | 2.60 |",
        "| completion tokens/s | 2.0 |",
        "| prompt tokens/s | 2.0 |",
        "| chat requests (failed) | 100 (3) |",
        "| feedback posts (failed) | 30 (1) |",
        "| cut off by the run time (not counted) | 2 |",
        "| latency: chat | 40 | 1 | 820 | 1,500 | 2,000 | 850 |",
        "| latency: chat stream | 60 | 2 | 1,900 | 3,500 | 4,000 | 1,950 |",
        "| TTFT: chat stream | 58 | 0 | 210 | 600 | 750 | 230 |",
        "| TPOT: chat stream | 55 | 0 | 45.0 | 80.0 | 88.0 | 46.7 |",
        "| latency: feedback | 30 | 1 | 12.0 | 40.0 | 55.0 | 14.1 |",
        "| GET: GET models | 1 | 0 | 5.0 | 5.0 | 5.0 | 5.0 |",
        "| support | adapter | 4 | 1 | 60 | 200 | 40.0 | 10.0 |",
        "| Base | base | 1 | 0 | 40 | 150 | – | – |",
        "error rate 3.08% (threshold 5.00%): **PASS**",
        "| chat stream | stream ended without [DONE] | 2 |",
        "| chat | HTTP 429: rate / limit | 1 |",
        "| support | 150 | 0 | 2 | 3000 | 0 | 0.450000 |",
        "| Base | 50 | 1 | 0 | 900 | 300 | 0.025000 |",
        "| **total** | 200 | 1 | 2 | 3900 | 300 | 0.475000 |",
        "**cost per 1K requests: 2.3750**",
    ]
    for line in expected:
        assert line in lines, line
    # fixed order of the latency table, then the rest
    order = [lines.index(x) for x in expected[8:14]]
    assert order == sorted(order)
    assert "scenario: 8 users (spawn 4.0/s) for 60s; 3 tenants x 3 adapters" in text
    assert "stream 60%, long prompts 25%, feedback 30% of answers; max_tokens 8-48" in text
    assert '`{"Base": {"prompt": 0.0005, "completion": 0.0015}}`' in text
    assert "Promotion during load" not in text and "promotion flips" not in text


def test_rendered_markdown_without_metering_shows_locust_side_tokens(tmp_path: Path) -> None:
    note = "GET /admin/usage: 404 (no metering route on this gateway)"
    s = summarize(write_run(tmp_path), metering=None, metering_note=note)
    assert s.cost_per_1k_requests is None
    text = load_report.render(s)
    assert f"cost per 1K requests: **n/a** ({note})" in text
    assert (
        "locust-side usage instead: 100 prompt + 100 completion tokens over 97 answered chat requests (2 per request)"
        in text
    )


def test_summary_and_markdown_of_promotion_during_load(tmp_path: Path) -> None:
    promoter = load_promoter.Promoter("http://tailor", "adm", "acme", "support", interval_s=2.0)
    promoter.switches = [
        load_promoter.Switch(2.0, "rollback", 200, 12.0, 1),
        load_promoter.Switch(4.0, "activate v2", 200, 20.0, 2),
        load_promoter.Switch(6.0, "rollback", 500, 300.0, None, "database is locked"),
    ]
    records = [*RECORDS[:-1], {**chat_record("support"), "tenant": "globex"}, RECORDS[-1]]  # not the flipped tenant
    config = {**CONFIG, "promote_during_load": True, "promote_tenant": "acme"}
    version_stats = [{"version": 1, "requests": 5, "errors": 0}, {"version": 2, "requests": 7, "errors": 1}]
    s = summarize(
        write_run(tmp_path, records=records),
        config=config,
        promoter=promoter,
        promoted="support",
        version_stats=version_stats,
    )
    assert s.promotion is not None
    assert {k: v for k, v in s.promotion.items() if k not in ("switches", "version_stats")} == {
        "tenant": "acme",
        "adapter": "support",
        "interval_s": 2.0,
        "switches_ok": 2,
        "switches_failed": 1,
        "requests_to_adapter": 4,
        "failed_requests_to_adapter": 1,
        "failed_requests_all": 4,
    }
    text = load_report.render(s)
    lines = text.splitlines()
    for line in [
        "| switches done | 2 (1 rollback, 1 activate v2) |",
        "| switches failed | 1 |",
        "| switch call p50 / max (ms) | 20.0 / 300 |",
        "| requests to the flipped adapter (failed) | 4 (1) |",
        "| failed requests during the run, all (target 0) | 4 |",
        "| requests served per version (`/v1/adapters/.../stats`, warm-up included) "
        "| v1: 5 (0 errors), v2: 7 (1 errors) |",
        "failed switch at 6.0 s (rollback): HTTP 500 database is locked",
    ]:
        assert line in lines, line
    assert "`acme/support` flipped between versions 1 and 2 every 2 s" in text
    assert "**promotion flips during load**" in text


# --- run_load: command line -----------------------------------------------------------------


def test_parser_defaults_match_the_readme_and_the_locustfile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TAILOR_ADMIN_KEY", raising=False)
    args = load_cli._parser().parse_args([])
    assert (args.url, args.admin_key, args.users, args.spawn_rate, args.run_time) == (None, None, 8, 4.0, "60s")
    assert (args.tenants, args.adapters_per_tenant, args.max_error_rate) == (3, 3, 0.01)
    assert (args.warmup, args.promote_during_load, args.promote_interval, args.locust_args) == (True, False, 2.0, [])
    # the scenario defaults are the locustfile's (the real parser's, checked in a subprocess test)
    lf_defaults = options()
    for name in ("stream_share", "long_share", "feedback_share", "zipf_s", "min_tokens", "max_tokens"):
        assert getattr(args, name) == getattr(lf_defaults, name), name


def test_parser_options_and_arguments_for_locust(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TAILOR_ADMIN_KEY", "adm-env")
    argv = [
        "--users", "4", "--run-time", "30s", "--promote-during-load", "--no-warmup", "--out", str(tmp_path),
        "--prices", '{"m": {"prompt": 0.1, "completion": 0.2}}', "--", "--stream-share", "0.9", "-L", "DEBUG",
    ]  # fmt: skip
    args = load_cli._parser().parse_args(argv)
    assert args.admin_key == "adm-env" and args.users == 4 and args.run_time == "30s"
    assert args.promote_during_load is True and args.warmup is False and args.out == tmp_path
    assert args.prices == {"m": {"prompt": 0.1, "completion": 0.2}}
    assert args.locust_args == ["--stream-share", "0.9", "-L", "DEBUG"]


def test_parser_rejects_bad_values(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--prices", "{not json"], ["--users", "many"]):
        with pytest.raises(SystemExit) as exc:
            load_cli._parser().parse_args(argv)
        assert exc.value.code == 2
    assert "invalid loads value" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--users", "0"], "--users and --tenants must be >= 1"),
        (["--tenants", "0"], "--users and --tenants must be >= 1"),
        (["--adapters-per-tenant", "-1"], "--adapters-per-tenant >= 0"),
        (["--promote-during-load", "--adapters-per-tenant", "0"], "--promote-during-load needs at least one adapter"),
    ],
)
def test_main_refuses_bad_arguments_before_doing_anything(argv: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=message):
        load_cli.main([*argv, "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_target_with_url_needs_an_admin_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TAILOR_ADMIN_KEY", raising=False)
    no_key = load_cli._parser().parse_args(["--url", "http://h:8000"])
    with pytest.raises(SystemExit, match="--url needs --admin-key"):
        load_cli._target(no_key).__enter__()
    args = load_cli._parser().parse_args(["--url", "http://h:8000/", "--admin-key", "adm"])
    with load_cli._target(args) as (url, key, description):
        assert (url, key, description) == ("http://h:8000", "adm", "http://h:8000/ (given)")


def run_module(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    return subprocess.run(
        [sys.executable, "-m", "loadtests.run_load", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )


def test_help_lists_the_options() -> None:
    proc = run_module("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m loadtests.run_load")
    for option in ("--url", "--users", "--run-time", "--promote-during-load", "--max-error-rate", "--prices"):
        assert option in proc.stdout


def test_parse_timespan_and_a_bad_run_time_in_a_subprocess(tmp_path: Path) -> None:
    code = (
        "import loadtests.run_load.locust_process as r;"
        " print([r.parse_timespan(t) for t in ('45', '30s', '2m', '1h1m1s')])"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[45.0, 30.0, 120.0, 3661.0]"

    out = tmp_path / "out"
    proc = run_module("--run-time", "5x", "--out", str(out))
    assert proc.returncode != 0
    assert "invalid --run-time '5x'" in proc.stderr
    assert not out.exists()  # failed before creating the results folder or building adapters


def test_records_written_by_the_locustfile_feed_the_summary(lf: Locustfile, clock: FakeClock, tmp_path: Path) -> None:
    """The two halves together: locustfile records -> run_load per-model figures and token throughput."""
    out = tmp_path / "run"
    opts = options(write_tenants(tmp_path), records_file=str(out / "records.jsonl"), feedback_share=0.0)
    lf.events.test_start.fire(environment=SimpleNamespace(parsed_options=opts))
    client = FakeClient(ok_responder(clock))
    user = make_user(lf, opts, client, seed=7)
    for _ in range(50):
        clock.now = 0.0
        user.chat()
    clock.now = 10.0
    lf.events.test_stop.fire(environment=SimpleNamespace(parsed_options=opts))
    write_run(out, records=None)
    s = summarize(out)

    assert s.duration_s == pytest.approx(10.0)
    assert sum(m["requests"] for m in s.per_model.values()) == 50
    streamed = sum(1 for p in client.chats() if p.stream)
    assert s.completion_tokens == streamed * 3 + (50 - streamed) * 5
    assert s.completion_tokens_per_s == pytest.approx(s.completion_tokens / 10.0)
    for model, figures in s.per_model.items():
        assert figures["failures"] == 0 and figures["base"] == (model == "Base")
        if any(p.stream and p.body["model"] == model for p in client.chats()):
            assert figures["p50_ttft_ms"] == pytest.approx(100.0)  # first token chunk at 0.1 s
            assert figures["p50_tpot_ms"] == pytest.approx(150.0)  # (400 ms - 100 ms) / (3 - 1)
        else:
            assert figures["p50_ttft_ms"] is None and figures["p50_tpot_ms"] is None
    assert math.isclose(sum(m["completion_tokens"] for m in s.per_model.values()), s.completion_tokens)
