"""Property-based tests for gateway/normalize/ and the SSE reader in gateway/proxy.py.

The normalisers take whatever the engine sent, already parsed by orjson, so the inputs
here are everything `orjson.loads` can produce: None, bools, integers in orjson's range
(-2**63 .. 2**64-1), finite floats, strings without lone surrogates, lists and objects.
Keys and strings are drawn partly from the vocabulary the normalisers look at, so the
interesting branches (choices, deltas, logprobs, usage, errors) are reached often, and
partly at random.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import normalize
from gateway.proxy import _sse_data
from tests.openai_schema import validate

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------ JSON strategies

_KEYS = [
    "id", "object", "created", "model", "choices", "index", "message", "delta", "text",
    "content", "refusal", "role", "tool_calls", "function_call", "function", "name",
    "arguments", "type", "annotations", "audio", "logprobs", "token", "logprob", "bytes",
    "top_logprobs", "token_logprobs", "tokens", "text_offset", "finish_reason", "usage",
    "prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details",
    "completion_tokens_details", "cached_tokens", "reasoning_tokens", "service_tier",
    "system_fingerprint", "error", "param", "code", "detail", "stop_reason", "token_ids",
]  # fmt: skip
_WORDS = [
    "stop", "length", "abort", "error", "repetition", "tool_calls", "content_filter",
    "function_call", "assistant", "user", "tool", "system", "developer", "function",
    "auto", "default", "flex", "priority", "404", "model_not_found", "", " ",
    # A message that is ONLY the alias list is a known bug (test_regression_alias_only_...).
    "The model `x` does not exist. Valid aliases: t1-abc, t2-def.",
]  # fmt: skip

# orjson.loads never yields lone surrogates (it rejects them), so neither do we.
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
_strings = st.one_of(st.sampled_from(_WORDS), _text)
# orjson.loads yields ints in -2**63 .. 2**64-1 and any finite float; normalize must
# never hand orjson.dumps an int outside 64 bits (test_regression_huge_numbers_...).
_ints = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.integers(-5, 5),
    st.sampled_from([0, 1, 200, 400, 404, 500, 599, 600]),
)
# orjson.loads never yields NaN/Infinity (they are not JSON). Integral floats matter:
# normalize's _int accepts 3.0 as 3.
_floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**70), 2**70).map(float),
)
_scalars = st.one_of(st.none(), st.booleans(), _ints, _floats, _strings)
_keys = st.one_of(st.sampled_from(_KEYS), _text)

json_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(_keys, children, max_size=6),
    ),
    max_leaves=20,
)
json_objects = st.dictionaries(_keys, json_values, max_size=8)

# Engine-shaped bodies: the right top-level skeleton with arbitrary contents, so the
# per-choice code runs on most examples instead of only when `choices` happens to be drawn.
_choice = st.fixed_dictionaries(
    {},
    optional={
        "index": json_values,
        "message": json_objects | json_values,
        "delta": json_objects | json_values,
        "text": json_values,
        "logprobs": json_objects | json_values,
        "finish_reason": json_values,
    },
)
engine_bodies = st.one_of(
    json_objects,
    st.fixed_dictionaries(
        {"choices": st.lists(st.one_of(_choice, json_values), max_size=3)},
        optional={
            "created": json_values,
            "usage": json_objects | json_values,
            "service_tier": json_values,
            "id": json_values,
            "model": json_values,
        },
    ),
)
error_bodies = st.one_of(
    json_values,
    st.binary(max_size=40),
    st.fixed_dictionaries({"error": json_objects | json_values}),
    st.fixed_dictionaries({"message": json_values}, optional={"param": json_values, "code": json_values}),
    st.fixed_dictionaries({"detail": json_values}),
)

# Enum-like fields once crashed on unhashable values (test_regression_unhashable_enum_fields);
# the properties now feed any JSON value there.
_HASHED_KEYS: frozenset[str] = frozenset()


def _scalars_at_hashed_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: None if k in _HASHED_KEYS and isinstance(v, (list, dict)) else _scalars_at_hashed_keys(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_scalars_at_hashed_keys(v) for v in value]
    return value


gateway_ids = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)
# A replacement is a public name; an empty one could blank a message on purpose.
replacements = st.none() | st.dictionaries(_text, _text.filter(bool), max_size=3)

_BODY_NORMALISERS = [
    normalize.chat_completion,
    normalize.chat_chunk,
    normalize.completion,
    normalize.completion_chunk,
]


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value)  # raises orjson.JSONEncodeError on anything not JSON


# ------------------------------------------------------------------ body normalisers


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fn=st.sampled_from(_BODY_NORMALISERS),
    body=engine_bodies.map(_scalars_at_hashed_keys),
    model=gateway_ids,
    id=gateway_ids,
)
def test_body_normalisers_total_and_serialisable(fn: Any, body: dict[str, Any], model: str, id: str) -> None:
    before = orjson.dumps(body)
    out = fn(body, model=model, id=id)
    assert isinstance(out, dict)
    assert out["model"] == model
    assert out["id"] == id
    assert type(out["created"]) is int
    assert isinstance(out["choices"], list)
    # Round-trips through JSON unchanged: nothing non-JSON, nothing orjson refuses.
    assert orjson.loads(_dumps(out)) == out
    # Inputs are not mutated (documented).
    assert orjson.dumps(body) == before


@SETTINGS
@given(chunk=engine_bodies.map(_scalars_at_hashed_keys), replace=replacements)
def test_stream_error_total_and_valid(chunk: dict[str, Any], replace: dict[str, str] | None) -> None:
    out = normalize.stream_error(chunk, replace=replace)
    if out is None:
        return
    _dumps(out)
    validate(out, "ErrorResponse")


@SETTINGS
@given(
    inner=json_objects,
    code=st.one_of(_ints, _floats, _strings, st.none()),
    replace=replacements,
)
def test_stream_error_on_error_events(inner: dict[str, Any], code: Any, replace: dict[str, str] | None) -> None:
    """Every `{"error": {...}}` event (no choices) becomes a valid ErrorResponse."""
    out = normalize.stream_error({"error": {**inner, "code": code}}, replace=replace)
    assert out is not None
    _dumps(out)
    validate(out, "ErrorResponse")


# ------------------------------------------------------------------ error


@SETTINGS
@given(body=error_bodies, status=st.integers(400, 599), replace=replacements)
def test_error_always_valid_error_response(body: object, status: int, replace: dict[str, str] | None) -> None:
    out = normalize.error(body, status, replace=replace)
    assert orjson.loads(_dumps(out)) == out
    validate(out, "ErrorResponse")
    err = out["error"]
    assert err["message"]
    assert len(err["message"]) <= 2000 + len("...") or replace  # replace may lengthen it
    assert "Valid aliases" not in err["message"] or replace
    assert err["code"] is None or (isinstance(err["code"], str) and not err["code"].isdigit())


# ------------------------------------------------------------------ SSE reader

# Payload bytes as the engine writes them after "data: ": no line breaks (\n or \r end
# an SSE line) and no surrounding whitespace (the reader strips it, as JSON allows).
_payloads = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"").strip())
# Lines an SSE stream may interleave that carry no payload.
_noise_lines = st.sampled_from([b": keep-alive", b"event: message", b"id: 7", b"retry: 10", b""])


class _FakeStream(httpx.AsyncByteStream):
    def __init__(self, blocks: list[bytes]) -> None:
        self.blocks = blocks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for block in self.blocks:
            yield block


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


async def _collect(resp: httpx.Response) -> list[bytes]:
    return [payload async for payload in _sse_data(resp)]


@SETTINGS
@given(
    events=st.lists(st.tuples(_payloads, st.lists(_noise_lines, max_size=2), st.booleans()), max_size=8),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
    crlf=st.booleans(),
    final_newline=st.booleans(),
)
def test_sse_data_yields_payloads_across_any_split(
    events: list[tuple[bytes, list[bytes], bool]], cuts: list[int], crlf: bool, final_newline: bool
) -> None:
    eol = b"\r\n" if crlf else b"\n"
    lines: list[bytes] = []
    for payload, noise, space in events:
        lines.extend(noise)
        lines.append(b"data:" + (b" " if space else b"") + payload)
        lines.append(b"")  # the blank line that ends an event
    data = eol.join(lines)
    if lines and not final_newline:
        data = data.removesuffix(eol).removesuffix(eol)  # the last event unterminated
    blocks = _split(data, cuts)
    resp = httpx.Response(200, stream=_FakeStream(blocks))
    assert asyncio.run(_collect(resp)) == [payload for payload, _, _ in events]


# ------------------------------------------------------------------ known bugs
# Minimal failing examples found by the properties above. strict=True: each turns into
# an XPASS failure once fixed, the cue to delete it and widen the strategy it narrows.


@pytest.mark.parametrize(
    "fn, body",
    [
        (normalize.chat_completion, {"choices": [{"finish_reason": []}]}),
        (normalize.completion_chunk, {"choices": [{"finish_reason": {}}]}),
        (normalize.chat_completion, {"choices": [], "service_tier": []}),
        (normalize.chat_chunk, {"choices": [{"delta": {"role": []}}]}),
    ],
)
def test_regression_unhashable_enum_fields(fn: Any, body: dict[str, Any]) -> None:
    fn(body, model="m", id="i")


@pytest.mark.parametrize(
    "body",
    [
        {"created": 1e300},  # _int(1e300) -> a 997-bit int
        {"choices": [{"index": 1e30}]},
        {"usage": {"prompt_tokens": 2**64 - 1, "completion_tokens": 1}},  # total = sum
        {"usage": {"prompt_tokens": -(2**63), "completion_tokens": -1}},
    ],
)
def test_regression_huge_numbers_break_serialisation(body: dict[str, Any]) -> None:
    # Every input is what orjson.loads returns for a valid engine answer; the output
    # is then orjson.dumps'ed by the proxy outside its error handling.
    orjson.dumps(body)
    orjson.dumps(normalize.chat_completion(body, model="m", id="i"))


@pytest.mark.parametrize("body", ["Valid aliases: t1-abc, t2-def.", {"error": {"message": "Valid aliases: a"}}])
def test_regression_alias_only_message_becomes_empty(body: object) -> None:
    assert normalize.error(body, 404)["error"]["message"]
