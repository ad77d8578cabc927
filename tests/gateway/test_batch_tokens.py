"""gateway.batches.tokens: the tokens each answered line reports, in OpenAI's Batch `usage`."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.batches.tokens import Tokens, of_answer
from tests.openai_schema import validate

CHAT = {
    "usage": {
        "prompt_tokens": 37,
        "completion_tokens": 8,
        "total_tokens": 45,
        "prompt_tokens_details": {"cached_tokens": 16},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
}
RESPONSE = {
    "usage": {
        "input_tokens": 20,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 29,
    }
}


def test_chat_and_responses_usage() -> None:
    assert of_answer(CHAT) == Tokens(input=37, cached=16, output=8, reasoning=2)
    assert of_answer(RESPONSE) == Tokens(input=20, cached=4, output=9)
    # vLLM sends null details: nothing cached, nothing reasoned, as far as anyone can tell.
    vllm = {"usage": {"prompt_tokens": 5, "completion_tokens": 8, "prompt_tokens_details": None}}
    assert of_answer(vllm) == Tokens(input=5, output=8)


@pytest.mark.parametrize(
    "body",
    [
        None,
        "text",
        {"error": {"message": "no"}},
        {"usage": None},
        {"usage": {"prompt_tokens": "7", "completion_tokens": -3}},
        {"usage": {"prompt_tokens": True, "completion_tokens": 1.5}},
    ],
)
def test_refusals_and_odd_values_count_nothing(body: Any) -> None:
    assert of_answer(body) == Tokens()


def test_usage_is_openais_batch_usage() -> None:
    usage = Tokens(input=37, cached=16, output=8, reasoning=2).usage()
    assert usage["total_tokens"] == 45
    batch = {
        "id": "batch_1",
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-1",
        "completion_window": "24h",
        "status": "completed",
        "created_at": 1,
        "usage": usage,
    }
    validate(batch, "Batch")
    with pytest.raises(Exception, match="reasoning_tokens"):
        validate({**batch, "usage": {**usage, "output_tokens_details": {}}}, "Batch")
