"""trainer.distill: the distillation settings, the context, and the OpenAI-compatible teacher.

The remote teacher runs against httpx's MockTransport here (requests checked, refusals and
retries scripted) and through the outbound policy to a server on loopback; a teacher on
loopback behind the worker, and what it must not do to a job: test_distill_worker.py.
tests/integration/test_distillation_live.py uses a real endpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.config import Settings
from core.errors import TailorError
from core.outbound import OutboundPolicy
from core.sealing import seal, unseal
from tests.core.test_outbound import Reply, local_server, resolve_as
from tests.trainer.teacher_doubles import LOOPBACK_ALLOWED, USER, completion, teacher
from trainer import distill
from trainer.distill import DistillSpec, RemoteTeacher, TeacherSpec


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


def test_key_from_the_trainer_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(data_dir=tmp_path, teacher_key_env_allowlist="TEACHER_KEY=t.example")  # type: ignore[arg-type]
    spec = TeacherSpec(model="big", base_url="https://t.example/v1", api_key_env="TEACHER_KEY")
    with pytest.raises(TailorError) as e:
        distill.teacher_api_key(spec, settings)
    assert e.value.code == "teacher_key_missing"
    monkeypatch.setenv("TEACHER_KEY", "sk-env")
    assert distill.teacher_api_key(spec, settings) == "sk-env"


@pytest.mark.parametrize("name", ["TAILOR_ADMIN_KEY", "TAILOR_SECRET_KEY", "AWS_SECRET_ACCESS_KEY", "NOT_SET_AT_ALL"])
def test_a_key_variable_must_be_on_the_operators_allow_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # The hole: any variable of the trainer's environment, sent as a bearer token to the
    # tenant's URL. Refused in the same words whether the variable exists or not.
    monkeypatch.setenv("TAILOR_ADMIN_KEY", "admin-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    settings = Settings(data_dir=tmp_path, teacher_key_env_allowlist="OPENAI_API_KEY=t.example")  # type: ignore[arg-type]
    e = refused({"teacher": {"model": "m", "base_url": "https://t.example/v1", "api_key_env": name}}, settings)
    assert (e.param, e.code) == ("method.distillation.teacher.api_key_env", "teacher_key_env_not_allowed")
    assert "TAILOR_TEACHER_KEY_ENV_ALLOWLIST" in e.message
    assert (
        e.message
        == refused(
            {"teacher": {"model": "m", "base_url": "https://t.example/v1", "api_key_env": "X"}}, settings
        ).message
    )
    # A job queued before the list changed is refused when it runs, before anything is read.
    stored = TeacherSpec(model="m", base_url="https://t.example/v1", api_key_env=name)
    with pytest.raises(TailorError) as at_run:
        distill.teacher_api_key(stored, settings)
    assert at_run.value.code == "teacher_key_env_not_allowed"
    allowed = {"teacher": {"model": "m", "base_url": "https://t.example/v1", "api_key_env": "OPENAI_API_KEY"}}
    assert distill.parse_spec(allowed, settings).teacher.api_key_env == "OPENAI_API_KEY"
    assert refused(allowed, Settings(data_dir=tmp_path)).code == "teacher_key_env_not_allowed"  # empty by default


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/v1",
        "https://127.0.0.1:8000/admin/tenants/victim/keys?",
        "https://localhost/v1",
        "https://169.254.169.254/latest/meta-data",
        "https://10.0.0.2/v1",
        "https://[::1]/v1",
        "https://2130706433/v1",
        "https://k:s@teacher.example.com/v1",
        "https://teacher.example.com/v1?",
        "https://teacher.example.com/v1#",
        "http://teacher.example.com/v1",
    ],
)
def test_teacher_urls_pass_the_outbound_policy(settings: Settings, url: str) -> None:
    e = refused({"teacher": {"model": "m", "base_url": url}}, settings)
    assert e.param == "method.distillation.teacher.base_url"


def test_an_allow_listed_teacher_on_the_private_network_is_accepted(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        outbound_allow_http=True,
        outbound_allow_hosts="127.0.0.1",  # type: ignore[arg-type]
    )
    spec = distill.parse_spec({"teacher": {"model": "m", "base_url": "http://127.0.0.1:8000/v1/"}}, settings)
    assert spec.teacher.base_url == "http://127.0.0.1:8000/v1"


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
        ({"teacher": {"base_url": "https://t.example/v1"}}, "method.distillation.teacher.model"),
        ({"teacher": {"model": "m", "base_url": "ftp://t"}}, "method.distillation.teacher.base_url"),
        ({"teacher": {"model": "m", "base_url": "t.example"}}, "method.distillation.teacher.base_url"),
        (
            {"teacher": {"model": "m", "base_url": "https://t.example", "api_key": "k", "api_key_env": "K"}},
            "method.distillation.teacher.api_key",
        ),
        ({"teacher": {"model": "m", "base_url": "https://t.example", "api_key_env": "not a name"}}, None),
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
    assert seen[0].url == "https://teacher.example/v1/chat/completions"
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


def test_a_refusal_fails_at_once_in_tailors_words() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(401, json={"error": {"message": "Incorrect API key provided"}})

    with pytest.raises(TailorError) as e:
        teacher(handler, concurrency=1).answer([[USER]])
    assert e.value.status == 502 and e.value.code == "teacher_failed"
    assert e.value.message == "the teacher endpoint at teacher.example answered HTTP 401"
    assert len(calls) == 1


def test_an_unreachable_or_garbled_teacher_fails_the_job() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    sleeps: list[float] = []
    with pytest.raises(TailorError) as e:
        teacher(down, sleeps, concurrency=1).answer([[USER]])
    assert e.value.message == "the teacher endpoint at teacher.example is unreachable: could not connect"
    assert len(sleeps) == distill.TEACHER_ATTEMPTS - 1
    with pytest.raises(TailorError, match="not an OpenAI chat completion"):
        teacher(lambda _r: httpx.Response(200, json={"answer": "hi"})).answer([[USER]])


# --- the remote teacher over the network, through the outbound policy ----------------------------

SECRET_BODY = b'{"error": {"message": "admin key sk-admin-0123456789 leaked", "detail": "SECRET-ROW"}}'


@pytest.mark.parametrize("status", [500, 401, 404])
def test_what_the_teacher_answers_never_reaches_the_job_error(status: int) -> None:
    with local_server(lambda _path: Reply(status, SECRET_BODY)) as server:
        sleeps: list[float] = []
        with pytest.raises(TailorError) as e:
            teacher(None, sleeps, base_url=f"{server.url}/v1", policy=LOOPBACK_ALLOWED, concurrency=1).answer([[USER]])
    assert e.value.message == f"the teacher endpoint at 127.0.0.1 answered HTTP {status}"
    assert "sk-admin" not in str(e.value.body()) and "SECRET-ROW" not in str(e.value.body())
    assert [path for _, path, _ in server.seen][0] == "/v1/chat/completions"
    assert len(server.seen) == (distill.TEACHER_ATTEMPTS if status == 500 else 1)


def test_a_redirect_is_reported_not_followed() -> None:
    def reply(path: str) -> Reply:
        return Reply(307, SECRET_BODY, {"location": "http://169.254.169.254/latest/meta-data/"})

    with local_server(reply) as server, pytest.raises(TailorError) as e:
        teacher(None, base_url=f"{server.url}/v1", policy=LOOPBACK_ALLOWED).answer([[USER]])
    assert e.value.message == "the teacher endpoint at 127.0.0.1 answered HTTP 307 (redirects are not followed)"
    assert len(server.seen) == 1


def test_a_teacher_not_allow_listed_is_refused_at_once_without_a_request(monkeypatch: pytest.MonkeyPatch) -> None:
    with local_server(lambda _path: Reply(200, json.dumps(completion("hi")).encode())) as server:
        # A public-looking name the tenant controls, resolving to the gateway's own host.
        resolve_as(monkeypatch, {"teacher.example.com": ["127.0.0.1"]})
        sleeps: list[float] = []
        url = f"http://teacher.example.com:{server.port}/v1"
        with pytest.raises(TailorError) as e:
            teacher(None, sleeps, base_url=url, policy=OutboundPolicy(allow_http=True)).answer([[USER]])
        assert e.value.message == (
            "the teacher endpoint at teacher.example.com is unreachable: "
            "refused by the outbound policy: teacher.example.com resolves to a private address"
        )
        assert sleeps == [] and server.seen == []
        # The same server, allow-listed by the operator, answers.
        allowed = OutboundPolicy(allow_http=True, allow_hosts=frozenset({"teacher.example.com"}))
        assert teacher(None, base_url=url, policy=allowed).answer([[USER]]) == ["hi"]


def test_a_stored_url_the_policy_now_refuses_fails_before_any_request() -> None:
    calls: list[httpx.Request] = []
    with pytest.raises(TailorError) as e:
        teacher(calls.append, base_url="http://127.0.0.1:8000/admin/keys?").answer([[USER]])
    assert e.value.param == "method.distillation.teacher.base_url" and calls == []


def test_the_policy_comes_from_the_trainers_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.config import get_settings

    monkeypatch.setenv("TAILOR_OUTBOUND_ALLOW_HOSTS", "teacher.lan")
    get_settings.cache_clear()
    try:
        made = RemoteTeacher(base_url="https://teacher.lan/v1", api_key="", model="m", max_tokens=1)
    finally:
        get_settings.cache_clear()
    assert made.policy == OutboundPolicy(allow_hosts=frozenset({"teacher.lan"}))


# --- teacher keys are bound to hosts -------------------------------------------------------------


@pytest.mark.parametrize("entry", ["OPENAI_API_KEY", "OPENAI_API_KEY=", "=api.openai.com", "K=https://a.example/v1"])
def test_a_key_variable_without_its_host_is_refused_when_settings_load(tmp_path: Path, entry: str) -> None:
    with pytest.raises(ValueError, match=r"entries are VAR=host.*OPENAI_API_KEY=api\.openai\.com"):
        Settings(data_dir=tmp_path, teacher_key_env_allowlist=entry)  # type: ignore[arg-type]
    bound = Settings(
        data_dir=tmp_path,
        teacher_key_env_allowlist="OPENAI_API_KEY=API.OpenAI.com,OPENAI_API_KEY=eu.api.openai.com, K=t.example",  # type: ignore[arg-type]
    )
    assert bound.teacher_key_env_names == {"OPENAI_API_KEY", "K"}


def test_a_key_variable_goes_only_to_the_hosts_it_is_bound_to(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        teacher_key_env_allowlist="OPENAI_API_KEY=api.openai.com,OPENAI_API_KEY=eu.api.openai.com",  # type: ignore[arg-type]
    )

    def raw(url: str, name: str = "OPENAI_API_KEY") -> dict[str, Any]:
        return {"teacher": {"model": "m", "base_url": url, "api_key_env": name}}

    for url in ("https://api.openai.com/v1", "https://EU.api.openai.com./v1", "https://api.openai.com:443/v1"):
        assert distill.parse_spec(raw(url), settings).teacher.api_key_env == "OPENAI_API_KEY"
    # The hole: an allowed variable sent to a host of the tenant's choosing.
    attacker = refused(raw("https://attacker.example/v1"), settings)
    assert (attacker.param, attacker.code) == ("method.distillation.teacher.api_key_env", "teacher_key_env_not_allowed")
    assert "TAILOR_TEACHER_KEY_ENV_ALLOWLIST" in attacker.message
    # one answer, whether the variable is unknown or only bound elsewhere
    assert refused(raw("https://attacker.example/v1", "NOT_LISTED"), settings).message == attacker.message
    assert refused(raw("https://api.openai.com.attacker.example/v1"), settings).message == attacker.message
