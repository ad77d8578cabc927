"""OpenAI's grader API on the real server with the official SDK: a string_check grader, and a
score_model grader whose judge is the base model answering on the real engine (structured
output under the score schema). Every raw body is checked against OpenAI's schema."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.integration.conftest import BASE_MODEL, TailorServer, TenantKeys
from tests.openai_schema import validate

pytestmark = pytest.mark.engine


def run(c: openai.OpenAI, **kwargs: Any) -> dict[str, Any]:
    raw = c.fine_tuning.alpha.graders.with_raw_response.run(**kwargs)
    body: dict[str, Any] = raw.http_response.json()
    validate(body, "RunGraderResponse")
    parsed = raw.parse()  # the SDK reads it as its own type
    assert parsed.reward == body["reward"]
    return body


def test_string_check_and_score_model_graders(tailor_server: TailorServer, tenant_a: TenantKeys) -> None:
    c = tailor_server.sdk(tenant_a, timeout=180)
    check = {
        "type": "string_check",
        "name": "exact",
        "input": "{{ sample.output_text }}",
        "reference": "{{ item.answer }}",
        "operation": "ilike",
    }
    body = run(c, grader=check, model_sample="The capital of France is Paris.", item={"answer": "paris"})
    assert body["reward"] == 1.0 and body["metadata"]["name"] == "exact"
    assert run(c, grader=check, model_sample="Lyon", item={"answer": "paris"})["reward"] == 0.0

    judge = {
        "type": "score_model",
        "name": "judge",
        "model": BASE_MODEL,
        "input": [
            {
                "role": "user",
                "content": "Reference answer: {{item.answer}}\nModel answer: {{sample.output_text}}\n"
                "Score from 0 to 1 how well the model answer matches the reference.",
            }
        ],
        "sampling_params": {"temperature": 0, "seed": 7, "max_completions_tokens": 32},
    }
    body = run(c, grader=judge, model_sample="Paris", item={"answer": "Paris"})
    errors = body["metadata"]["errors"]
    assert not errors["model_grader_server_error"], errors
    assert not errors["model_grader_parse_error"], body  # the engine kept to the score schema
    assert 0.0 <= body["reward"] <= 1.0
    assert body["metadata"]["sampled_model_name"] == BASE_MODEL and body["metadata"]["token_usage"] > 0
    usage = body["model_grader_token_usage_per_model"][BASE_MODEL]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0

    raw = c.fine_tuning.alpha.graders.with_raw_response.validate(grader=judge)
    validate(raw.http_response.json(), "ValidateGraderResponse")
    with pytest.raises(openai.BadRequestError) as info:
        c.fine_tuning.alpha.graders.run(grader={**judge, "range": [1, 0]}, model_sample="x")
    assert info.value.body["param"] == "grader.range"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        c.fine_tuning.alpha.graders.run(
            grader={**judge, "model": "not-a-model"}, model_sample="x", item={"answer": "y"}
        )
