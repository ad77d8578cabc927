"""gateway.normalize's errors: engine error bodies and stream error events, captured from vLLM
(tests/gateway/vllm_captures.py) or of every shape an engine or a proxy in front of it may send,
as valid OpenAI `ErrorResponse`s that name nothing internal."""

from __future__ import annotations

import json

import pytest

from gateway import normalize
from tests.gateway.vllm_captures import ADAPTER, FIXTURES, PUBLIC_MODEL, load_events, load_record, schema_error
from tests.openai_schema import validate

ERRORS = [
    ("error_unknown_model", "not_found_error"),
    ("error_unknown_model_with_adapter", "not_found_error"),
    ("error_bad_temperature", "invalid_request_error"),
    ("error_lora_bad_temperature", "invalid_request_error"),
    ("error_stream_bad_temperature", "invalid_request_error"),
    ("error_max_tokens_too_large", "invalid_request_error"),
    ("error_missing_messages", "invalid_request_error"),
    ("error_completion_missing_prompt", "invalid_request_error"),
    ("error_completion_prompt_too_long", "invalid_request_error"),
    ("error_invalid_json", "invalid_request_error"),
]


@pytest.mark.parametrize(("name", "openai_type"), ERRORS)
def test_real_engine_errors(name: str, openai_type: str) -> None:
    record = load_record(name)
    raw = record["body"]
    # vLLM's `code` is the HTTP status as an integer; OpenAI's is a string or null.
    assert "code" in schema_error(raw, "ErrorResponse")

    out = normalize.error(raw, record["status"])

    validate(out, "ErrorResponse")
    err = out["error"]
    assert err["type"] == openai_type
    assert err["code"] is None
    assert err["param"] == raw["error"]["param"]
    assert err["message"] and err["message"] in raw["error"]["message"]


def test_unknown_model_error_does_not_list_served_names() -> None:
    raw = load_record("error_unknown_model")["body"]
    assert "Valid aliases" in raw["error"]["message"]
    out = normalize.error(raw, 404)
    assert out["error"]["message"] == "The model `no-such-model` does not exist."


def test_error_replaces_internal_names() -> None:
    body = {
        "error": {
            "message": f"LoRA adapter {ADAPTER} failed to load from /srv/a/{ADAPTER}",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
    }
    out = normalize.error(body, 400, replace={ADAPTER: PUBLIC_MODEL})
    validate(out, "ErrorResponse")
    assert ADAPTER not in out["error"]["message"]
    assert PUBLIC_MODEL in out["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "message", "openai_type"),
    [
        (
            {
                "object": "error",
                "message": "old style",
                "type": "BadRequestError",
                "param": "n",
                "code": 400,
            },
            400,
            "old style",
            "invalid_request_error",
        ),
        ("Internal Server Error", 500, "Internal Server Error", "server_error"),
        (b"upstream connect error", 502, "upstream connect error", "server_error"),
        ({"detail": "Not Found"}, 404, "Not Found", "not_found_error"),
        ({"detail": [{"loc": ["body"], "msg": "bad"}]}, 422, "bad", "invalid_request_error"),
        ({"error": "rate limited"}, 429, "rate limited", "rate_limit_error"),
        (None, 401, "HTTP 401", "authentication_error"),
        ([1, 2], 403, "HTTP 403", "permission_error"),
        ("", 500, "HTTP 500", "server_error"),
        (
            {"error": {"message": "x", "type": "t", "code": "model_not_found"}},
            404,
            "x",
            "not_found_error",
        ),
    ],
)
def test_error_any_body(body: object, status: int, message: str, openai_type: str) -> None:
    out = normalize.error(body, status)
    validate(out, "ErrorResponse")
    assert message in out["error"]["message"]
    assert out["error"]["type"] == openai_type
    assert set(out["error"]) == {"message", "type", "param", "code"}


def test_error_keeps_a_string_code() -> None:
    body = {"error": {"message": "x", "type": "t", "param": None, "code": "model_not_found"}}
    assert normalize.error(body, 404)["error"]["code"] == "model_not_found"


# --------------------------------------------------------------------------- stream errors


def test_mid_stream_error_event_is_detected_and_normalised() -> None:
    events = load_events("chat_stream_midstream_error")
    assert [normalize.stream_error(e) for e in events[:-1]] == [None] * (len(events) - 1)
    raw = events[-1]
    assert "code" in schema_error(raw, "ErrorResponse")
    out = normalize.stream_error(raw)
    assert out is not None
    validate(out, "ErrorResponse")
    assert out["error"] == {
        "message": "Internal server error",
        "type": "server_error",
        "param": None,
        "code": None,
    }


@pytest.mark.parametrize("key", ["generation_error", "unexpected_exception"])
def test_stream_error_events_from_vllm(key: str) -> None:
    raw = json.loads((FIXTURES / "stream_error_events.json").read_text())[key]
    out = normalize.stream_error(raw, replace={ADAPTER: PUBLIC_MODEL})
    assert out is not None
    validate(out, "ErrorResponse")
    assert out["error"]["type"] == "server_error"


def test_stream_error_status_falls_back_to_500() -> None:
    out = normalize.stream_error({"error": {"message": "boom", "code": "weird"}})
    assert out is not None and out["error"]["type"] == "server_error"
    assert normalize.stream_error({"error": {"message": "slow", "code": 429}})["error"]["type"] == "rate_limit_error"
    for event in load_events("chat_stream_usage") + load_events("completion_stream_usage"):
        assert normalize.stream_error(event) is None
