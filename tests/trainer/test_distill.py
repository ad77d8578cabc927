"""trainer.distill: the distillation settings, the context, and the OpenAI-compatible teacher.

The remote teacher runs against httpx's MockTransport here (requests checked, refusals and
retries scripted); tests/integration/test_distillation_live.py uses a real endpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.config import Settings
from core.errors import TailorError
from core.sealing import seal, unseal
from trainer import distill
from trainer.distill import DistillSpec, RemoteTeacher, TeacherSpec

USER = {"role": "user", "content": "Where is my parcel?"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


def refused(raw: dict[str, Any], settings: Settings) -> TailorError:
    with pytest.raises(TailorError) as e:
        distill.parse_spec(raw, settings)
    assert e.value.status == 400
    return e.value


# --- settings -------------------------------------------------------------------------


def test_prompt_distillation_spec_round_trips(settings: Settings) -> None:
    raw = {
        "system": "You route tickets.",
        "examples": [{"role": "user", "content": "Refund?"}, {"role": "assistant", "content": "BILL-7"}],
        "max_tokens": 8,
    }
    spec = distill.parse_spec(raw, settings)
    assert spec.has_context and not spec.teacher.remote
    assert DistillSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    assert spec.public() == {
        "teacher": {"model": None, "base_url": None, "api_key": None, "api_key_env": None},
        "system_chars": len("You route tickets."),
        "examples": 2,
        "max_tokens": 8,
    }


def test_teacher_key_is_sealed_and_never_shown(settings: Settings) -> None:
    raw = {"teacher": {"model": "big", "base_url": "https://teacher.example/v1/", "api_key": "sk-very-secret"}}
    spec = distill.parse_spec(raw, settings)
    stored = json.dumps(spec.to_json())
    assert "sk-very-secret" not in stored
    assert spec.teacher.base_url == "https://teacher.example/v1"
    assert distill.teacher_api_key(spec.teacher, settings) == "sk-very-secret"
    assert spec.public()["teacher"]["api_key"] == "set"
    assert "sk-very-secret" not in json.dumps(spec.public())


def test_a_key_sealed_elsewhere_cannot_be_opened(tmp_path: Path) -> None:
    a = Settings(data_dir=tmp_path / "a")
    b = Settings(data_dir=tmp_path / "b")
    token = seal(a, "sk-1")
    assert unseal(a, token) == "sk-1"
    assert unseal(Settings(data_dir=tmp_path / "a"), token) == "sk-1"  # the key file is reused
    assert (tmp_path / "a" / "secret.key").stat().st_mode & 0o077 == 0
    with pytest.raises(TailorError) as e:
        unseal(b, token)
    assert e.value.code == "secret_unreadable"
    shared = Settings(data_dir=tmp_path / "c", secret_key="one-secret")  # type: ignore[arg-type]
    again = Settings(data_dir=tmp_path / "d", secret_key="one-secret")  # type: ignore[arg-type]
    assert unseal(again, seal(shared, "sk-2")) == "sk-2"


def test_key_from_the_trainer_environment(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = TeacherSpec(model="big", base_url="http://t/v1", api_key_env="TEACHER_KEY")
    with pytest.raises(TailorError) as e:
        distill.teacher_api_key(spec, settings)
    assert e.value.code == "teacher_key_missing"
    monkeypatch.setenv("TEACHER_KEY", "sk-env")
    assert distill.teacher_api_key(spec, settings) == "sk-env"


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ({}, "method.distillation"),  # neither context nor teacher: nothing to distill
        ({"teacher": {"model": "acme-adapter"}}, "method.distillation"),
        ({"system": "  "}, "method.distillation.system"),
        ({"system": 3}, "method.distillation.system"),
        ({"examples": [{"role": "user", "content": "hi"}]}, "method.distillation.examples"),
        ({"examples": [{"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}]}, None),
        ({"examples": "hi"}, "method.distillation.examples"),
        ({"system": "s", "max_tokens": 0}, "method.distillation.max_tokens"),
        ({"system": "s", "max_tokens": True}, "method.distillation.max_tokens"),
        ({"system": "s", "colour": "blue"}, "method.distillation.colour"),
        ({"teacher": {"base_url": "http://t/v1"}}, "method.distillation.teacher.model"),
        ({"teacher": {"model": "m", "base_url": "ftp://t"}}, "method.distillation.teacher.base_url"),
        ({"teacher": {"model": "m", "base_url": "t.example"}}, "method.distillation.teacher.base_url"),
        (
            {"teacher": {"model": "m", "base_url": "http://t", "api_key": "k", "api_key_env": "K"}},
            "method.distillation.teacher.api_key",
        ),
        ({"teacher": {"model": "m", "base_url": "http://t", "api_key_env": "not a name"}}, None),
        ({"system": "s", "teacher": {"model": "m", "api_key": "k"}}, "method.distillation.teacher.api_key"),
        ({"system": "s", "teacher": "gpt"}, "method.distillation.teacher"),
        ({"system": "s", "teacher": {"model": "m", "secret": 1}}, "method.distillation.teacher.secret"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(raw: dict[str, Any], param: str | None, settings: Settings) -> None:
    e = refused(raw, settings)
    assert e.param is not None and e.param.startswith("method.distillation")
    if param is not None:
        assert e.param == param


# --- context ----------------------------------------------------------------------------


def test_context_goes_in_front_and_merges_system_prompts() -> None:
    shots = ({"role": "user", "content": "Refund?"}, {"role": "assistant", "content": "BILL-7"})
    spec = DistillSpec(system="Route tickets.", examples=shots)
    assert distill.with_context(spec, [USER]) == [{"role": "system", "content": "Route tickets."}, *shots, USER]
    own = [{"role": "system", "content": "Be brief."}, USER]
    assert distill.with_context(spec, own)[0] == {"role": "system", "content": "Route tickets.\n\nBe brief."}
    assert distill.with_context(DistillSpec(), own) == own  # no context: the input as it is


def test_context_token_counts_measure_the_saving() -> None:
    spec = DistillSpec(system="x" * 30)
    counts = distill.context_token_counts(lambda ms: sum(len(m["content"]) for m in ms), spec, [[USER], [USER]])
    n = len(USER["content"])
    assert counts == {
        "prompt_tokens_with_context": 30 + n,
        "prompt_tokens_without_context": n,
        "prompt_tokens_saved_per_request": 30,
        "prompt_tokens_saved_fraction": round(30 / (30 + n), 4),
    }
    assert distill.context_token_counts(len, spec, []) == {}


# --- the remote teacher ---------------------------------------------------------------------


def completion(text: str | None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


def teacher(handler: Any, sleeps: list[float] | None = None, **kw: Any) -> RemoteTeacher:
    return RemoteTeacher(
        base_url="http://teacher/v1",
        api_key=kw.pop("api_key", "sk-t"),
        model="big-model",
        max_tokens=16,
        concurrency=kw.pop("concurrency", 2),
        transport=httpx.MockTransport(handler),
        sleep=(sleeps if sleeps is not None else []).append,
        **kw,
    )


def test_remote_teacher_answers_in_order_with_a_greedy_request() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = json.loads(request.content)
        return httpx.Response(200, json=completion(f"  answer to {body['messages'][-1]['content']} "))

    progress: list[tuple[int, int]] = []
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(5)]
    answers = teacher(handler, on_progress=lambda d, t: progress.append((d, t))).answer(prompts)
    assert answers == [f"answer to q{i}" for i in range(5)]
    assert sorted(progress) == [(i, 5) for i in range(1, 6)]
    body = json.loads(seen[0].content)
    assert seen[0].url == "http://teacher/v1/chat/completions"
    assert seen[0].headers["authorization"] == "Bearer sk-t"
    assert body["model"] == "big-model" and body["temperature"] == 0 and body["max_tokens"] == 16


def test_no_key_sends_no_authorization_header() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert "authorization" not in request.headers
        return httpx.Response(200, json=completion(None))

    assert teacher(handler, api_key="").answer([[USER]]) == [""]  # no content: an empty answer


def test_rate_limits_and_server_errors_are_retried_with_backoff() -> None:
    replies = iter(
        [
            httpx.Response(429, headers={"retry-after": "3"}, json={"error": {"message": "slow down"}}),
            httpx.Response(503, json={"error": {"message": "busy"}}),
            httpx.Response(200, json=completion("ok")),
        ]
    )
    sleeps: list[float] = []
    assert teacher(lambda _r: next(replies), sleeps, concurrency=1).answer([[USER]]) == ["ok"]
    assert sleeps == [3.0, 2.0]  # Retry-After first, then the doubled backoff


def test_a_refusal_fails_at_once_with_the_teachers_message() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(401, json={"error": {"message": "Incorrect API key provided"}})

    with pytest.raises(TailorError) as e:
        teacher(handler, concurrency=1).answer([[USER]])
    assert e.value.status == 502 and e.value.code == "teacher_failed"
    assert "HTTP 401" in e.value.message and "Incorrect API key" in e.value.message
    assert "sk-t" not in e.value.message
    assert len(calls) == 1


def test_an_unreachable_or_garbled_teacher_fails_the_job() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    sleeps: list[float] = []
    with pytest.raises(TailorError, match="unreachable"):
        teacher(down, sleeps, concurrency=1).answer([[USER]])
    assert len(sleeps) == distill.TEACHER_ATTEMPTS - 1
    with pytest.raises(TailorError, match="not an OpenAI chat completion"):
        teacher(lambda _r: httpx.Response(200, json={"answer": "hi"})).answer([[USER]])
