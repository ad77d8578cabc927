"""Stand-ins for running `loadtests/locustfile.py` without locust, and fakes for its user's HTTP client.

How locust is kept out of this process: `import locust` runs `gevent.monkey.patch_all()`
(sockets, threads, time.sleep, subprocess become gevent's), which would change every test run
after it in the same session. So `load_locustfile` executes `locustfile.py` from its path under
a private module name while `sys.modules` maps `locust` and `gevent` to small stand-ins (events
with listeners, a plain `HttpUser` base class, `task` as the identity, `GreenletExit`);
`sys.modules` is restored right after, so no real locust or gevent gets imported or patches
anything. One subprocess test (test_locustfile_requests) imports the real thing and checks that
the stand-ins match it: the user class is a locust `HttpUser` with `chat` as its task,
`GreenletExit` is a BaseException (so `except Exception` in the locustfile does not swallow
it), and the scenario options parse with the defaults and `TAILOR_LOAD_*` variables `options`
assumes.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import httpx

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


@contextmanager
def load_locustfile() -> Iterator[Locustfile]:
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
    try:
        yield Locustfile(module=module, events=events, greenlet_exit=_GreenletExit)
    finally:
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
