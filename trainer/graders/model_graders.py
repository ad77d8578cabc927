"""score_model and label_model: a model reads the rendered input and answers a score or a label.

The model is asked for JSON under a schema (structured outputs: `{"result": number}` for a
score, `{"result": one of labels}` for a label), after a system message that says so. A score
is clamped into the grader's `range`; an answer that is not a number (or a label) is a
`model_grader_parse_error` and rewards 0. A label rewards 1.0 when it is one of
`passing_labels`, else 0.0. `sampling_params` pass on (temperature, top_p, seed, and
max_completions_tokens as max_tokens; reasoning_effort is accepted and unused).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from trainer.graders import templates
from trainer.graders.models import ModelCaller, ModelReply
from trainer.graders.spec import LabelModelGrader, ModelGrader, SamplingParams, ScoreModelGrader
from trainer.graders.templates import Sample

DEFAULT_MAX_TOKENS = 256
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def messages(grader: ModelGrader, sample: Sample, item: Mapping[str, Any]) -> list[dict[str, str]]:
    """The chat the grader model reads: what it must answer, then the grader's input, rendered
    (all of it at most templates.MAX_RENDERED_CHARS: TooLarge past that)."""
    left = templates.MAX_RENDERED_CHARS
    chat = [{"role": "system", "content": _instruction(grader)}]
    for message in grader.input:
        texts = []
        for template in message.texts():
            texts.append(templates.render(template, sample, item, limit=left))
            left -= len(texts[-1])
        chat.append({"role": message.role, "content": "\n".join(texts)})
    return chat


def _instruction(grader: ModelGrader) -> str:
    if isinstance(grader, ScoreModelGrader):
        low, high = grader.range
        return f'Answer only with JSON {{"result": <score>}}, the score a number from {low:g} to {high:g}.'
    return f'Answer only with JSON {{"result": <label>}}, the label one of: {", ".join(grader.labels)}.'


def request_body(grader: ModelGrader, chat: list[dict[str, str]]) -> dict[str, Any]:
    """The chat completion request (without `model`)."""
    if isinstance(grader, ScoreModelGrader):
        result: dict[str, Any] = {"type": "number"}
    else:
        result = {"type": "string", "enum": list(grader.labels)}
    schema = {"type": "object", "properties": {"result": result}, "required": ["result"], "additionalProperties": False}
    body: dict[str, Any] = {
        "messages": chat,
        "response_format": {"type": "json_schema", "json_schema": {"name": "grade", "schema": schema, "strict": True}},
        "max_tokens": DEFAULT_MAX_TOKENS,
    }
    body.update(_sampling(grader.sampling_params))
    return body


def _sampling(params: SamplingParams | None) -> dict[str, Any]:
    if params is None:
        return {}
    values = {"temperature": params.temperature, "top_p": params.top_p, "seed": params.seed}
    if params.max_completions_tokens is not None:
        values["max_tokens"] = params.max_completions_tokens
    return {k: v for k, v in values.items() if v is not None}


def _result(text: str) -> Any:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data.get("result") if isinstance(data, dict) else data


def read_score(grader: ScoreModelGrader, reply: ModelReply) -> float | None:
    """The score in the reply, clamped into the range; None when there is none."""
    value = _result(reply.text)
    if value is None:  # an endpoint that ignored the schema: a bare number will do
        match = _NUMBER.fullmatch(reply.text.strip())
        value = float(match.group(0)) if match else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    low, high = grader.range
    return min(max(float(value), low), high)


def read_label(grader: LabelModelGrader, reply: ModelReply) -> float | None:
    """1.0 for a passing label, 0.0 for another label; None when the reply names none."""
    value = _result(reply.text)
    if not isinstance(value, str):
        value = reply.text.strip()
    if value not in grader.labels:
        return None
    return 1.0 if value in grader.passing_labels else 0.0


async def ask(grader: ModelGrader, models: ModelCaller, sample: Sample, item: Mapping[str, Any]) -> ModelReply:
    return await models(grader.model, request_body(grader, messages(grader, sample, item)))
