"""trainer.graders without a server: each grader type, templates, the multi grader's formula,
model graders over a fake model caller, and the refusals of invalid graders."""

from __future__ import annotations

from typing import Any

import pytest

from core.errors import TailorError
from tests.openai_schema import validate
from tests.trainer.string_check_cases import STRING_CHECK_CASES
from trainer.graders import (
    Capabilities,
    GradingContext,
    ModelReply,
    Sample,
    TokenUsage,
    grade,
    grade_batch,
    parse_grader,
    public,
    templates,
)

NONE = Capabilities()


def check(name: str, input: str, reference: str, operation: str) -> dict[str, Any]:
    return {"type": "string_check", "name": name, "input": input, "reference": reference, "operation": operation}


def similarity(metric: str, input: str = "{{sample.output_text}}", reference: str = "{{item.ref}}") -> dict[str, Any]:
    return {"type": "text_similarity", "name": "sim", "input": input, "reference": reference} | {
        "evaluation_metric": metric
    }


async def run(raw: dict[str, Any], answer: str, item: dict[str, Any] | None = None, **context: Any) -> dict[str, Any]:
    grader = parse_grader(raw, context.pop("capabilities", NONE))
    result = await grade(grader, Sample.from_text(answer), item or {}, GradingContext(**context))
    body = result.as_run_response()
    validate(body, "RunGraderResponse")
    return body


def refused(raw: Any, *, capabilities: Capabilities = NONE) -> TailorError:
    with pytest.raises(TailorError) as info:
        parse_grader(raw, capabilities)
    assert info.value.status == 400
    return info.value


# --------------------------------------------------------------------------- string_check


@pytest.mark.parametrize(("operation", "answer", "reference", "reward"), STRING_CHECK_CASES)
async def test_string_check_operations(operation: str, answer: str, reference: str, reward: float) -> None:
    body = await run(check("c", "{{ sample.output_text }}", "{{item.label}}", operation), answer, {"label": reference})
    assert body["reward"] == reward
    assert body["metadata"]["type"] == "string_check" and body["metadata"]["name"] == "c"
    assert not any(v for v in body["metadata"]["errors"].values())


# --------------------------------------------------------------------------- templates


async def test_output_json_paths_and_item_lists() -> None:
    raw = check("c", "{{sample.output_json.city.name}}/{{ item.cities[1] }}", "Paris/Lyon", "eq")
    body = await run(raw, '{"city": {"name": "Paris"}}', {"cities": ["Nice", "Lyon"]})
    assert body["reward"] == 1.0


def test_non_string_values_render_as_compact_json() -> None:
    sample = Sample.from_text('{"a": [1, 2]}')
    assert templates.render("{{sample.output_json.a}} {{item.n}} {{item.o}}", sample, {"n": 3, "o": {"k": None}}) == (
        '[1,2] 3 {"k":null}'
    )


async def test_missing_item_variable_is_an_invalid_variable_error_not_a_refusal() -> None:
    body = await run(check("c", "{{sample.output_text}}", "{{item.nothing}}", "eq"), "x", {"label": "x"})
    assert body["reward"] == 0.0
    errors = body["metadata"]["errors"]
    assert errors["invalid_variable_error"] is True and errors["sample_parse_error"] is False


async def test_output_json_of_a_sample_that_is_not_json_is_a_sample_parse_error() -> None:
    body = await run(check("c", "{{sample.output_json.city}}", "Paris", "eq"), "Paris, surely", {})
    errors = body["metadata"]["errors"]
    assert body["reward"] == 0.0 and errors["sample_parse_error"] is True and errors["invalid_variable_error"] is True


async def test_text_without_variables_and_braces_that_are_not_variables() -> None:
    body = await run(check("c", "{a} {{sample.output_text}}", "{a} x", "eq"), "x")
    assert body["reward"] == 1.0


@pytest.mark.parametrize(
    "template", ["{{ environ.HOME }}", "{{item}}x{{ sample }}", "{{ sample.output_text | upper }}", "{{ __import__ }}"]
)
def test_invalid_template_variables_are_refused_with_the_field(template: str) -> None:
    error = refused(check("c", template, "x", "eq"))
    assert error.param == "grader.input" and error.code == "invalid_grader"


# --------------------------------------------------------------------------- text_similarity


METRICS = ["fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l"]


@pytest.mark.parametrize("metric", METRICS)
async def test_identical_texts_score_one_and_unrelated_ones_less(metric: str) -> None:
    ref = "the quick brown fox jumps over the lazy dog"
    same = await run(similarity(metric), ref, {"ref": ref})
    other = await run(similarity(metric), "a completely different sentence about cats", {"ref": ref})
    assert same["reward"] == pytest.approx(1.0, abs=1e-3)  # METEOR's fragmentation penalty leaves 0.9990
    assert other["reward"] < 0.5


async def test_fuzzy_match_ignores_case_and_punctuation() -> None:
    body = await run(similarity("fuzzy_match"), "Fuzzy Wuzzy was a BEAR!", {"ref": "fuzzy wuzzy was a bear"})
    assert body["reward"] == 1.0


async def test_rouge_is_the_f_measure() -> None:
    body = await run(similarity("rouge_1"), "the cat sat on a mat", {"ref": "the cat sat on the mat"})
    assert body["reward"] == pytest.approx(5 / 6)


async def test_empty_text_scores_zero() -> None:
    assert (await run(similarity("bleu"), "", {"ref": "something"}))["reward"] == 0.0


def test_cosine_is_refused_without_an_embeddings_model() -> None:
    error = refused(similarity("cosine"))
    assert error.code == "cosine_unavailable" and error.param == "grader.evaluation_metric"
    assert "embeddings model" in error.message


# --------------------------------------------------------------------------- multi


def multi(formula: str, graders: Any = None) -> dict[str, Any]:
    graders = graders or {
        "exact": check("exact", "{{sample.output_text}}", "{{item.ref}}", "eq"),
        "close": similarity("fuzzy_match"),
    }
    return {"type": "multi", "name": "combined", "graders": graders, "calculate_output": formula}


async def test_multi_grader_combines_named_rewards() -> None:
    body = await run(multi("0.5 * exact + 0.5 * close^2"), "Paris", {"ref": "Paris"})
    assert body["reward"] == 1.0 and body["sub_rewards"] == {"exact": 1.0, "close": 1.0}
    body = await run(multi("max(exact, close) - abs(-0.25) + floor(0.5) + sqrt(0) + log(1) + exp(0) - ceil(0.2)"), "x")
    assert body["sub_rewards"]["exact"] == 0.0 and body["reward"] == pytest.approx(-0.25, abs=1e-9)


async def test_multi_grader_in_the_schema_form_names_its_one_grader_by_name() -> None:
    raw = multi("2 * exact", check("exact", "{{sample.output_text}}", "Paris", "eq"))
    body = await run(raw, "Paris")
    assert body["reward"] == 2.0 and body["sub_rewards"] == {"exact": 1.0}
    assert public(parse_grader(raw, NONE))["graders"]["name"] == "exact"


async def test_multi_grader_division_by_zero_is_an_error_of_the_grade() -> None:
    body = await run(multi("exact / close"), "x", {"ref": "completely different"})
    assert body["reward"] == 0.0 and body["metadata"]["errors"]["other_error"] is True


async def test_multi_grader_reports_sub_grader_errors() -> None:
    raw = multi("exact + close", {"exact": check("exact", "{{item.missing}}", "x", "eq"), "close": similarity("bleu")})
    body = await run(raw, "x", {"ref": "x"})
    assert body["metadata"]["errors"]["invalid_variable_error"] is True


@pytest.mark.parametrize(
    ("formula", "why"),
    [
        ("exact + unknown", "is not one of the graders"),
        ("__import__('os').system('id')", "only"),
        ("exact.__class__", "not allowed"),
        ("exact if close else 1", "not allowed"),
        ("exact % 2", "operators"),
        ("'text'", "only numbers"),
        ("exact +", "not an arithmetic formula"),
        ("[exact]", "not allowed"),
    ],
)
def test_bad_formulas_are_refused(formula: str, why: str) -> None:
    error = refused(multi(formula))
    assert error.param == "grader.calculate_output" and why in error.message


# --------------------------------------------------------------------------- model graders


class FakeModels:
    """A model caller that answers from a script and records what it was asked."""

    def __init__(self, *answers: str | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, model: str, body: dict[str, Any]) -> ModelReply:
        self.calls.append((model, body))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return ModelReply(answer, TokenUsage(10, 3), model)


def score_model(**extra: Any) -> dict[str, Any]:
    return {
        "type": "score_model",
        "name": "judge",
        "model": "my-judge",
        "input": [
            {"role": "system", "content": "Compare."},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Reference: {{item.ref}}"},
                    {"type": "output_text", "text": "Answer: {{sample.output_text}}"},
                ],
            },
        ],
        **extra,
    }


async def test_score_model_asks_for_a_json_score_and_reads_it() -> None:
    models = FakeModels('{"result": 0.75}')
    params = {"temperature": 0, "seed": 7, "top_p": 0.5, "max_completions_tokens": 20, "reasoning_effort": "low"}
    body = await run(score_model(sampling_params=params), "Paris", {"ref": "Paris"}, models=models)
    assert body["reward"] == 0.75
    assert body["metadata"]["sampled_model_name"] == "my-judge" and body["metadata"]["token_usage"] == 13
    assert body["model_grader_token_usage_per_model"] == {
        "my-judge": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13, "cached_tokens": 0}
    }
    model, sent = models.calls[0]
    assert model == "my-judge"
    assert sent["messages"][0]["role"] == "system" and "0 to 1" in sent["messages"][0]["content"]
    assert sent["messages"][1:] == [
        {"role": "system", "content": "Compare."},
        {"role": "user", "content": "Reference: Paris\nAnswer: Paris"},
    ]
    assert sent["response_format"]["json_schema"]["schema"]["properties"]["result"] == {"type": "number"}
    assert (sent["temperature"], sent["seed"], sent["top_p"], sent["max_tokens"]) == (0, 7, 0.5, 20)
    assert "reasoning_effort" not in sent


@pytest.mark.parametrize(("answer", "reward"), [('{"result": 14}', 10.0), ('{"result": -3}', 2.0), ("7", 7.0)])
async def test_score_is_clamped_into_the_range(answer: str, reward: float) -> None:
    body = await run(score_model(range=[2, 10]), "x", {"ref": "y"}, models=FakeModels(answer))
    assert body["reward"] == reward and not body["metadata"]["errors"]["model_grader_parse_error"]


@pytest.mark.parametrize("answer", ["great answer", '{"result": "high"}', '{"result": true}', "{}"])
async def test_score_that_is_no_number_is_a_parse_error(answer: str) -> None:
    body = await run(score_model(), "x", {"ref": "y"}, models=FakeModels(answer))
    assert body["reward"] == 0.0 and body["metadata"]["errors"]["model_grader_parse_error"] is True


async def test_model_failure_for_now_is_a_server_error_of_the_grade() -> None:
    failing = FakeModels(TailorError(503, "The inference engine became unavailable.", code="engine_unavailable"))
    body = await run(score_model(), "x", {"ref": "y"}, models=failing)
    errors = body["metadata"]["errors"]
    assert body["reward"] == 0.0 and errors["model_grader_server_error"] is True
    assert "unavailable" in errors["model_grader_server_error_details"]


async def test_unknown_model_is_raised() -> None:
    unknown = FakeModels(TailorError(404, "The model 'nope' does not exist.", code="model_not_found"))
    with pytest.raises(TailorError) as info:
        await run(score_model(), "x", {"ref": "y"}, models=unknown)
    assert info.value.status == 404


def label_model(**extra: Any) -> dict[str, Any]:
    return {
        "type": "label_model",
        "name": "sentiment",
        "model": "my-judge",
        "input": [{"role": "user", "content": "Statement: {{sample.output_text}}"}],
        "labels": ["positive", "neutral", "negative"],
        "passing_labels": ["positive"],
        **extra,
    }


@pytest.mark.parametrize(("answer", "reward"), [('{"result": "positive"}', 1.0), ('{"result": "negative"}', 0.0)])
async def test_label_model_inside_a_multi_grader(answer: str, reward: float) -> None:
    models = FakeModels(answer)
    body = await run(multi("feel", {"feel": label_model()}), "I love it", models=models)
    assert body["reward"] == reward and body["sub_rewards"] == {"feel": reward}
    schema = models.calls[0][1]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["result"]["enum"] == ["positive", "neutral", "negative"]


async def test_label_outside_the_labels_is_a_parse_error() -> None:
    body = await run(multi("feel", {"feel": label_model()}), "x", models=FakeModels('{"result": "meh"}'))
    assert body["metadata"]["errors"]["model_grader_parse_error"] is True


async def test_grade_batch_keeps_the_order() -> None:
    grader = parse_grader(check("c", "{{sample.output_text}}", "{{item.ref}}", "eq"), NONE)
    pairs = [(Sample.from_text(a), {"ref": r}) for a, r in [("a", "a"), ("a", "b"), ("c", "c")]]
    results = await grade_batch(grader, pairs, GradingContext(), concurrency=2)
    assert [r.reward for r in results] == [1.0, 0.0, 1.0]


# --------------------------------------------------------------------------- invalid graders


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ("not an object", "grader"),
        ({"type": "nope", "name": "x"}, "grader"),
        ({"type": "string_check", "name": "x", "input": "a", "reference": "b"}, "grader.operation"),
        (check("x", "a", "b", "regex"), "grader.operation"),
        ({**similarity("bleu"), "evaluation_metric": "bertscore"}, "grader.evaluation_metric"),
        (score_model(range=[1, 0]), "grader.range"),
        (score_model(range=[0, 1, 2]), "grader.range"),
        (score_model(input=[]), "grader.input"),
        ({**score_model(), "model": ""}, "grader.model"),
        (score_model(sampling_params={"max_completions_tokens": 0}), "grader.sampling_params.max_completions_tokens"),
        (
            score_model(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]),
            "grader.input.0.content",
        ),
        (multi("a", {"a": {**label_model(), "passing_labels": ["great"]}}), "grader.graders.a"),
        ({"type": "multi", "name": "m", "graders": {}, "calculate_output": "1"}, "grader.graders"),
    ],
)
def test_invalid_graders_are_400_naming_the_field(raw: Any, param: str) -> None:
    error = refused(raw)
    assert error.code == "invalid_grader"
    assert error.param is not None and error.param.startswith(param), error.param


def test_label_model_alone_is_refused_as_openai_does() -> None:
    error = refused(label_model())
    assert error.param == "grader.type"


def test_python_grader_is_refused_unless_enabled() -> None:
    raw = {"type": "python", "name": "py", "source": "def grade(sample, item):\n    return 1.0\n"}
    assert refused(raw).code == "python_grader_disabled"
    error = refused(raw, capabilities=Capabilities(python=True, python_refusal="unshare: operation not permitted"))
    assert error.code == "python_grader_unavailable" and "unshare" in error.message
    assert refused({**raw, "source": "grade = 1"}, capabilities=Capabilities(python=True)).param == "grader.source"
    assert parse_grader(raw, Capabilities(python=True)).type == "python"


def test_validated_grader_comes_back_in_openai_form() -> None:
    raw = score_model(range=[0, 5])
    back = public(parse_grader(raw, NONE))
    validate(back, "GraderScoreModel")
    assert back["range"] == [0.0, 5.0] and back["input"][1]["content"][0]["text"] == "Reference: {{item.ref}}"
