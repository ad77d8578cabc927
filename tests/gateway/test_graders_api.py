"""`/v1/fine_tuning/alpha/graders/run` and `/validate` on the real app over a fake engine: every
body and error checked against OpenAI's schema; model graders answered on the tenant's chat
path (logged, metered, tenant-scoped); Python graders refused unless enabled, run when enabled;
operator-configured grader models reached through the outbound policy."""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from core.config import GraderModelEndpoint
from core.errors import TailorError
from core.outbound import OutboundPolicy
from gateway import graders
from gateway.limits import TenantLimits
from tests.gateway.gateway_world import (
    BASE,
    Gateway,
    Running,
    answer_with,
    raw_json,
    tenant_view,
)
from tests.gateway.module_gateway import gateway_beside_shared, module_gateway
from tests.openai_schema import validate
from trainer.graders import ExternalModels

RUN = "/v1/fine_tuning/alpha/graders/run"
VALIDATE = "/v1/fine_tuning/alpha/graders/validate"
STRING_CHECK = {
    "type": "string_check",
    "name": "exact",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.label }}",
    "operation": "eq",
}
PYTHON = {"type": "python", "name": "py", "source": "def grade(sample, item):\n    return 0.25\n"}


def score_model(model: str = BASE) -> dict[str, Any]:
    return {
        "type": "score_model",
        "name": "judge",
        "model": model,
        "input": [{"role": "user", "content": "Is {{sample.output_text}} the capital of {{item.country}}?"}],
        "range": [0, 10],
        "sampling_params": {"temperature": 0, "seed": 1},
    }


def chat_answer(content: str) -> dict[str, Any]:
    body = copy.deepcopy(raw_json("chat")["body"])
    body["choices"][0]["message"]["content"] = content
    return body


shared = module_gateway("graders")
with_python = gateway_beside_shared("graders-python", python_graders_enabled=True)


async def post(gw: Gateway, path: str, body: dict[str, Any]) -> httpx.Response:
    return await gw.http.post(path, json=body, headers=gw.auth)


def ok_run(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    body = r.json()
    validate(body, "RunGraderResponse")
    return body  # type: ignore[no-any-return]


def error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    validate(r.json(), "ErrorResponse")
    return r.json()["error"]  # type: ignore[no-any-return]


@pytest.mark.asyncio(loop_scope="module")
async def test_run_string_check(gw: Gateway) -> None:
    body = ok_run(await post(gw, RUN, {"grader": STRING_CHECK, "model_sample": "Paris", "item": {"label": "Paris"}}))
    assert body["reward"] == 1.0 and body["metadata"]["type"] == "string_check"
    assert body["metadata"]["token_usage"] is None and body["model_grader_token_usage_per_model"] == {}
    body = ok_run(await post(gw, RUN, {"grader": STRING_CHECK, "model_sample": "Lyon", "item": {"label": "Paris"}}))
    assert body["reward"] == 0.0
    assert gw.fake.completions() == []  # no model was asked


@pytest.mark.asyncio(loop_scope="module")
async def test_run_without_item_and_a_multi_grader(gw: Gateway) -> None:
    multi = {
        "type": "multi",
        "name": "both",
        "graders": {
            "exact": {**STRING_CHECK, "reference": "Paris"},
            "close": {
                "type": "text_similarity",
                "name": "close",
                "input": "{{sample.output_json.city}}",
                "reference": "Paris",
                "evaluation_metric": "fuzzy_match",
            },
        },
        "calculate_output": "0.5 * exact + 0.5 * close",
    }
    body = ok_run(await post(gw, RUN, {"grader": multi, "model_sample": '{"city": "Paris"}'}))
    assert body["sub_rewards"] == {"exact": 0.0, "close": 1.0} and body["reward"] == 0.5


@pytest.mark.asyncio(loop_scope="module")
async def test_validate_returns_the_grader(gw: Gateway) -> None:
    for grader in (STRING_CHECK, score_model()):
        r = await post(gw, VALIDATE, {"grader": grader})
        assert r.status_code == 200, r.text
        validate(r.json(), "ValidateGraderResponse")
        assert r.json()["grader"]["name"] == grader["name"]


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("path", [RUN, VALIDATE])
@pytest.mark.parametrize(
    ("grader", "param", "code"),
    [
        ({**STRING_CHECK, "operation": "regex"}, "grader.operation", "invalid_grader"),
        ({**STRING_CHECK, "input": "{{ os.environ }}"}, "grader.input", "invalid_grader"),
        (
            {"type": "text_similarity", "name": "c", "input": "a", "reference": "b", "evaluation_metric": "cosine"},
            "grader.evaluation_metric",
            "cosine_unavailable",
        ),
        (PYTHON, "grader.type", "python_grader_disabled"),
        (
            {"type": "multi", "name": "m", "graders": {"a": STRING_CHECK}, "calculate_output": "a + b"},
            "grader.calculate_output",
            "invalid_grader",
        ),
    ],
)
async def test_invalid_graders_are_400(gw: Gateway, path: str, grader: dict[str, Any], param: str, code: str) -> None:
    err = error(await post(gw, path, {"grader": grader, "model_sample": "x"}), 400)
    assert (err["param"], err["code"]) == (param, code)


@pytest.mark.asyncio(loop_scope="module")
async def test_missing_fields_and_keys(gw: Gateway) -> None:
    assert error(await post(gw, RUN, {"grader": STRING_CHECK}), 400)["param"] == "model_sample"
    assert error(await post(gw, VALIDATE, {}), 400)["param"] == "grader"
    assert error(await gw.http.post(RUN, json={"grader": STRING_CHECK, "model_sample": "x"}), 401)


@pytest.mark.asyncio(loop_scope="module")
async def test_score_model_asks_the_tenants_model_on_the_chat_path(gw: Gateway) -> None:
    gw.fake.script.append(answer_with(200, chat_answer('{"result": 8}')))
    r = await post(gw, RUN, {"grader": score_model(), "model_sample": "Paris", "item": {"country": "France"}})
    body = ok_run(r)
    assert body["reward"] == 8.0 and body["metadata"]["sampled_model_name"] == BASE
    assert body["metadata"]["token_usage"] == 45
    assert body["model_grader_token_usage_per_model"][BASE]["prompt_tokens"] == 37
    (seen,) = gw.fake.completions()
    assert seen.body["model"] == BASE and seen.body["temperature"] == 0 and seen.body["seed"] == 1
    assert seen.body["messages"][-1] == {"role": "user", "content": "Is Paris the capital of France?"}
    assert seen.body["response_format"]["type"] == "json_schema"
    (row,) = await gw.rows()
    assert row.endpoint == "fine_tuning.graders" and row.status_code == 200 and row.model == BASE
    assert row.prompt_tokens == 37 and row.response_text == '{"result": 8}'


@pytest.mark.asyncio(loop_scope="module")
async def test_an_engine_failure_is_a_model_grader_server_error(gw: Gateway) -> None:
    gw.fake.script.append(answer_with(500, {"error": {"message": "boom", "type": "InternalServerError", "code": 500}}))
    body = ok_run(await post(gw, RUN, {"grader": score_model(), "model_sample": "x", "item": {"country": "y"}}))
    errors = body["metadata"]["errors"]
    assert body["reward"] == 0.0 and errors["model_grader_server_error"] is True
    assert errors["model_grader_server_error_details"]


@pytest.mark.asyncio(loop_scope="module")
async def test_another_tenants_adapter_is_404(gw: Gateway, other: Gateway) -> None:
    other.register_adapter("judge")
    err = error(
        await post(gw, RUN, {"grader": score_model("judge"), "model_sample": "x", "item": {"country": "y"}}), 404
    )
    assert err["param"] == "grader.model" and err["code"] == "model_not_found"
    unknown = {"grader": score_model("no-such-model"), "model_sample": "x", "item": {"country": "y"}}
    assert error(await post(gw, RUN, unknown), 404)["code"] == "model_not_found"
    assert gw.fake.completions() == []
    # Its owner may use it.
    other.fake.script.append(answer_with(200, chat_answer('{"result": 3}')))
    r = await post(other, RUN, {"grader": score_model("judge"), "model_sample": "x", "item": {"country": "y"}})
    assert ok_run(r)["reward"] == 3.0


@pytest.fixture
def python_gw(with_python: Running, tmp_path: Any) -> Any:
    return tenant_view(with_python, tmp_path)


@pytest.mark.asyncio(loop_scope="module")
async def test_python_grader_runs_when_enabled(python_gw: Any) -> None:
    async for gw in python_gw:
        body = ok_run(await post(gw, RUN, {"grader": PYTHON, "model_sample": "x"}))
        if body["metadata"]["errors"]["python_grader_server_error"]:
            pytest.skip("this host cannot isolate")
        assert body["reward"] == 0.25 and body["metadata"]["type"] == "python"
        crash = {**PYTHON, "source": "def grade(sample, item):\n    return item['missing']\n"}
        body = ok_run(await post(gw, RUN, {"grader": crash, "model_sample": "x", "item": {}}))
        errors = body["metadata"]["errors"]
        assert (
            errors["python_grader_runtime_error"] is True
            and "KeyError" in errors["python_grader_runtime_error_details"]
        )


async def test_external_grader_models_go_through_the_outbound_policy(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[httpx.Request] = []

    def endpoint(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=chat_answer('{"result": 1}'))

    endpoints = {
        "gpt-judge": GraderModelEndpoint(base_url="https://judge.example.com/v1", model="gpt-4o", api_key="sk-op"),
        "inside": GraderModelEndpoint(base_url="http://127.0.0.1:8000/v1"),
    }
    models = ExternalModels(endpoints, OutboundPolicy(), transport=httpx.MockTransport(endpoint))
    reply = await models("gpt-judge", {"messages": [{"role": "user", "content": "hi"}]})
    assert reply.text == '{"result": 1}' and reply.usage.prompt_tokens == 37
    (request,) = seen
    assert str(request.url) == "https://judge.example.com/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-op" and json.loads(request.content)["model"] == "gpt-4o"
    with pytest.raises(TailorError) as info:
        await models("inside", {"messages": []})
    # The tenant learns that it failed; why, and the operator's URL, only the log says.
    assert info.value.status == 502 and "127.0.0.1" not in info.value.message and len(seen) == 1
    assert "outbound policy" in caplog.text


def judge(handler: Any, **endpoint: Any) -> ExternalModels:
    endpoints = {"judge": GraderModelEndpoint(base_url="https://judge.example.com/v1", **endpoint)}
    return ExternalModels(endpoints, OutboundPolicy(), transport=httpx.MockTransport(handler), max_tokens=64)


async def test_an_endpoint_failure_names_neither_host_nor_status(caplog: pytest.LogCaptureFixture) -> None:
    models = judge(lambda request: httpx.Response(503, text="upstream secret detail"))
    with pytest.raises(TailorError) as info:
        await models("judge", {"messages": []})
    assert "judge.example.com" not in info.value.message and "503" not in info.value.message
    assert "secret" not in info.value.message and "judge.example.com answered HTTP 503" in caplog.text


async def test_operator_endpoints_clamp_max_tokens_and_may_be_kept_to_some_tenants() -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json=chat_answer('{"result": 1}'))

    await judge(handler)("judge", {"messages": [], "max_tokens": 1_000_000})
    await judge(handler)("judge", {"messages": []})
    assert [body["max_tokens"] for body in sent] == [64, 64]
    kept = {"tenants": ["t-allowed"]}
    assert judge(handler, **kept).handles("judge") is False  # no tenant: not open to it
    allowed, other = judge(handler, **kept), judge(handler, **kept)
    allowed.tenant_id, other.tenant_id = "t-allowed", "t-other"
    assert allowed.handles("judge") and not other.handles("judge")
    with pytest.raises(TailorError) as info:
        await other("judge", {"messages": []})
    assert info.value.status == 404 and len(sent) == 2


async def test_operator_endpoint_calls_are_bounded_and_off_the_default_executor() -> None:
    running, most, threads = 0, 0, set()
    lock = threading.Lock()

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            threads.add(threading.current_thread().name)
        time.sleep(0.05)
        with lock:
            running -= 1
        return httpx.Response(200, json=chat_answer('{"result": 1}'))

    models = judge(handler)
    models.concurrency = 2
    await asyncio.gather(*(models("judge", {"messages": []}) for _ in range(8)))
    assert most == 2 and all(name.startswith("grader-endpoint") for name in threads)


async def test_operator_endpoint_calls_count_against_the_tenants_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    admitted: list[str] = []
    metered: list[tuple[str, int]] = []

    async def admit(services: Any, caller: Any) -> None:
        admitted.append(caller.tenant_id)
        if len(admitted) > 1:
            raise TailorError(429, "Rate limit reached.", code="rate_limit_exceeded")

    monkeypatch.setattr(graders.proxy, "admit", admit)
    services = SimpleNamespace(meter=SimpleNamespace(add=lambda tenant, n: metered.append((tenant, n))))
    caller = SimpleNamespace(tenant_id="t1", limits=TenantLimits(requests_per_minute=1, tokens_per_day=1000))
    models = graders.OperatorModels(services, caller, judge(lambda r: httpx.Response(200, json=chat_answer("1"))))  # type: ignore[arg-type]
    await models("judge", {"messages": []})
    assert metered == [("t1", 45)]
    with pytest.raises(TailorError) as info:
        await models("judge", {"messages": []})
    assert info.value.status == 429 and metered == [("t1", 45)]
