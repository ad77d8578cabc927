"""trainer.rewards: a reinforcement job's grader (any trainer.graders type) checked at creation
as the grader routes check it, and run as the reward; trainer.reward_models: the models its
model graders reach (the tenant's on the worker's engine, the operator's endpoints)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from core.config import GraderModelEndpoint, Settings
from core.errors import TailorError
from tests.trainer.string_check_cases import STRING_CHECK_CASES
from trainer.compute.engine import EngineClient
from trainer.graders import Capabilities, GradingContext, ModelReply, TokenUsage, parse_grader, public
from trainer.graders.sandbox import SandboxOutcome
from trainer.reward_models import ENGINE_AUTH_ENV, GraderModels, engine_environment, grading_context
from trainer.rewards import PARAM, Scores, check_grader, model_names, reward_for

GRADER = {
    "type": "string_check",
    "name": "label",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.label }}",
    "operation": "eq",
}
JUDGE = [{"role": "user", "content": "Answer: {{ sample.output_text }} Expected: {{ item.label }}"}]
SCORE = {"type": "score_model", "name": "judge", "model": "judge-1", "input": JUDGE, "range": [0, 10]}
LABEL = {
    "type": "label_model",
    "name": "tone",
    "model": "judge-1",
    "input": JUDGE,
    "labels": ["polite", "rude"],
    "passing_labels": ["polite"],
}
PYTHON = {"type": "python", "name": "py", "source": "def grade(sample, item):\n    return 1.0\n"}


async def scores(spec: dict[str, Any], answers: list[str], items: list[dict[str, Any]], **context: Any) -> Scores:
    return await reward_for(spec, GradingContext(**context)).scores(answers, items)


@pytest.mark.parametrize(("operation", "answer", "reference", "score"), STRING_CHECK_CASES)
async def test_string_check_operations(operation: str, answer: str, reference: str, score: float) -> None:
    assert (await scores({**GRADER, "operation": operation}, [answer], [{"label": reference}])).rewards == [score]


async def test_scores_follow_their_rows_and_average() -> None:
    answers, items = ["A", "B", "C", "D"], [{"label": "A"}, {"label": "x"}, {"label": "C"}, {"label": "D"}]
    result = await scores(GRADER, answers, items)
    assert (result.rewards, result.mean, result.errors) == ([1.0, 0.0, 1.0, 1.0], 0.75, 0)
    with pytest.raises(ValueError):
        await scores(GRADER, answers, items[:3])  # a score per answer and its own row, never shifted


async def test_templates_read_the_rows_fields_and_the_answers_json() -> None:
    spec = {**GRADER, "input": "{{ sample.output_json.queue }}/{{ item.meta.n }}", "reference": "{{ item.want }}"}
    items = [{"meta": {"n": 3}, "want": "billing/3"}] * 2
    result = await scores(spec, ['{"queue": "billing"}', "not json"], items)
    # an answer that is not JSON is that grade's error, scored 0 as OpenAI does
    assert (result.rewards, result.errors) == ([1.0, 0.0], 1)


async def test_text_similarity_is_a_reward() -> None:
    spec = {"type": "text_similarity", "name": "close", "input": "{{ sample.output_text }}",
            "reference": "{{ item.label }}", "evaluation_metric": "fuzzy_match"}  # fmt: skip
    result = await scores(spec, ["Paris", "Lyon"], [{"label": "Paris"}] * 2)
    assert result.rewards[0] == 1.0 and result.rewards[1] < 0.5


class FakeModels:
    """A model caller answering each chat with `answers[last user text]`, recording the asks."""

    def __init__(self, answer: str = '{"result": 7}', status: int | None = None) -> None:
        self.answer, self.status, self.asked = answer, status, []  # type: ignore[var-annotated]

    async def __call__(self, model: str, body: dict[str, Any]) -> ModelReply:
        self.asked.append((model, body))
        if self.status is not None:
            raise TailorError(self.status, "no", code="model_grader_error")
        return ModelReply(self.answer, TokenUsage(10, 2), model)


async def test_score_model_is_a_reward_scaled_into_its_range() -> None:
    models = FakeModels('{"result": 7}')
    result = await scores(SCORE, ["Paris"], [{"label": "Paris"}], models=models)
    assert result.rewards == [7.0]
    ((model, body),) = models.asked
    assert model == "judge-1" and "Answer: Paris Expected: Paris" in body["messages"][-1]["content"]


async def test_label_model_in_a_multi_grader_is_a_reward() -> None:
    multi = {"type": "multi", "name": "both", "graders": {"tone": LABEL, "exact": GRADER},
             "calculate_output": "0.5 * tone + 0.5 * exact"}  # fmt: skip
    polite = await scores(multi, ["A"], [{"label": "A"}], models=FakeModels('{"result": "polite"}'))
    rude = await scores(multi, ["A"], [{"label": "B"}], models=FakeModels('{"result": "rude"}'))
    assert (polite.rewards, rude.rewards) == ([1.0], [0.0])
    assert model_names(multi) == {"judge-1"} and model_names(GRADER) == set()


async def test_a_model_that_failed_for_now_scores_0_and_one_that_is_not_there_fails_the_job() -> None:
    row = {"label": "a"}
    failed = await scores(SCORE, ["a", "b"], [row, row], models=FakeModels(status=503))
    assert (failed.rewards, failed.errors) == ([0.0, 0.0], 2)
    unparsable = await scores(SCORE, ["a"], [row], models=FakeModels("great"))
    assert (unparsable.rewards, unparsable.errors) == ([0.0], 1)
    with pytest.raises(TailorError) as e:
        await scores(SCORE, ["a"], [row], models=FakeModels(status=404))
    assert e.value.status == 404


class FakeSandbox:
    def __init__(self) -> None:
        self.runs: list[tuple[Any, Any]] = []

    async def run(self, source: str, sample: Any, item: Any) -> SandboxOutcome:
        self.runs.append((sample, item))
        return SandboxOutcome(reward=float(item["n"]) / 2) if "n" in item else SandboxOutcome(error="KeyError: 'n'")


async def test_python_grader_is_a_reward_where_the_sandbox_runs() -> None:
    box = FakeSandbox()
    result = await scores(PYTHON, ["x", "y"], [{"n": 1}, {}], sandbox=box)
    assert (result.rewards, result.errors) == ([0.5, 0.0], 1)
    assert box.runs[0][0]["output_text"] == "x"
    # a worker without the sandbox (Python graders off there) cannot run it: the job fails, clearly
    with pytest.raises(TailorError) as e:
        reward_for(PYTHON, GradingContext())
    assert (e.value.status, e.value.code, e.value.param) == (400, "python_grader_disabled", f"{PARAM}.type")


@pytest.mark.parametrize(
    ("spec", "param", "code"),
    [
        (None, PARAM, "invalid_grader"),
        ("string_check", PARAM, "invalid_grader"),
        ({**GRADER, "operation": "regex"}, f"{PARAM}.operation", "invalid_grader"),
        ({**GRADER, "input": 3}, f"{PARAM}.input", "invalid_grader"),
        ({**GRADER, "input": "{{ item.label | upper }}"}, f"{PARAM}.input", "invalid_grader"),
        ({**GRADER, "reference": "{{ env.HOME }}"}, f"{PARAM}.reference", "invalid_grader"),
        (PYTHON, f"{PARAM}.type", "python_grader_disabled"),
        (LABEL, f"{PARAM}.type", "invalid_grader"),  # only inside a multi grader, as in OpenAI's API
        ({**SCORE, "input": [{"role": "user", "content": {"type": "input_image"}}]}, None, "invalid_grader"),
        ({**SCORE, "range": [1, 0]}, f"{PARAM}.range", "invalid_grader"),
        (
            {"type": "multi", "name": "m", "graders": {"a": GRADER}, "calculate_output": "b"},
            f"{PARAM}.calculate_output",
            "invalid_grader",
        ),  # fmt: skip
        (
            {**GRADER, "type": "text_similarity", "evaluation_metric": "cosine"},
            f"{PARAM}.evaluation_metric",
            "cosine_unavailable",
        ),  # fmt: skip
    ],
)
def test_bad_graders_are_the_routes_400s_naming_the_field(spec: object, param: str | None, code: str) -> None:
    with pytest.raises(TailorError) as e:
        check_grader(spec, Capabilities())
    assert (e.value.status, e.value.code) == (400, code)
    assert param is None or e.value.param == param, e.value.param


@pytest.mark.parametrize("spec", [GRADER, SCORE, PYTHON, {"type": "multi", "name": "m", "graders": {"t": LABEL},
                                                          "calculate_output": "t"}])  # fmt: skip
def test_the_stored_grader_is_what_validate_answers(spec: dict[str, Any]) -> None:
    capabilities = Capabilities(python=True)
    assert check_grader(spec, capabilities) == public(parse_grader(spec, capabilities))


# --- the models model graders reach --------------------------------------------------------


def engine(answers: list[dict[str, Any]]) -> EngineClient:
    def handle(request: httpx.Request) -> httpx.Response:
        answers.append({"auth": request.headers.get("authorization"), **json.loads(request.content)})
        return httpx.Response(200, json={"choices": [{"message": {"content": '{"result": 0.25}'}}], "usage": {}})

    return EngineClient("http://engine", "base", {"Authorization": "Bearer k"}, transport=httpx.MockTransport(handle))


async def test_the_tenants_models_answer_on_the_engine_under_their_served_names(tmp_path: Any) -> None:
    asked: list[dict[str, Any]] = []
    models = GraderModels("t1", "http://engine", {"judge-1": "tailor-grader-job-0"})
    context = grading_context(Settings(data_dir=tmp_path), models, engine(asked))
    assert (await reward_for(SCORE, context).scores(["a"], [{"label": "a"}])).rewards == [0.25]
    assert asked[0]["model"] == "tailor-grader-job-0" and asked[0]["auth"] == "Bearer k"
    # the training process gets the names in its recipe, the key in its environment only
    assert GraderModels.from_json(json.loads(json.dumps(models.as_json()))) == models
    assert "Bearer" not in json.dumps(models.as_json())
    env = engine_environment(engine([]))
    assert env == {ENGINE_AUTH_ENV: "Bearer k"}
    rebuilt = models.engine(env)
    assert rebuilt is not None and rebuilt.url == "http://engine" and rebuilt.headers == {"Authorization": "Bearer k"}


async def test_a_model_the_tenant_does_not_have_is_refused_not_asked(tmp_path: Any) -> None:
    asked: list[dict[str, Any]] = []
    settings = Settings(
        data_dir=tmp_path,
        # the operator's endpoint kept to another tenant: for t1 the name is not there
        grader_model_endpoints={"judge-1": GraderModelEndpoint(base_url="https://judge.example/v1", tenants=["t2"])},
    )
    context = grading_context(settings, GraderModels("t1", "http://engine", {}), engine(asked))
    with pytest.raises(TailorError) as e:
        await reward_for(SCORE, context).scores(["a"], [{"label": "a"}])
    assert (e.value.status, e.value.code) == (404, "model_not_found") and "judge-1" in e.value.message
    assert asked == []


async def test_an_operator_endpoint_outside_the_outbound_policy_is_never_called(tmp_path: Any) -> None:
    calls: list[httpx.Request] = []
    settings = Settings(
        data_dir=tmp_path,
        grader_model_endpoints={"judge-1": GraderModelEndpoint(base_url="http://169.254.169.254/v1")},
    )
    context = grading_context(settings, GraderModels("t1"), None)
    external = context.models.external  # type: ignore[union-attr]
    external.transport = httpx.MockTransport(lambda r: calls.append(r) or httpx.Response(200, json={}))
    result = await reward_for(SCORE, context).scores(["a"], [{"label": "a"}])
    assert (result.rewards, result.errors, calls) == ([0.0], 1, [])
