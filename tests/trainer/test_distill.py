"""trainer.distill: the distillation settings, the context, and the OpenAI-compatible teacher.

The remote teacher runs against httpx's MockTransport here (requests checked, refusals and
retries scripted), and against a real server on loopback where what it answers must not
reach the job; tests/integration/test_distillation_live.py uses a real endpoint.
"""

from __future__ import annotations

import json
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.config import Settings
from core.errors import TailorError
from core.outbound import OutboundPolicy
from core.sealing import seal, unseal
from tests.core.test_outbound import Reply, local_server, resolve_as
from trainer import distill
from trainer.compute.recipe import TrainingCancelled
from trainer.distill import DistillSpec, RemoteTeacher, TeacherSpec, remote

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


def completion(text: str | None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


def teacher(handler: Any, sleeps: list[float] | None = None, **kw: Any) -> RemoteTeacher:
    return RemoteTeacher(
        base_url=kw.pop("base_url", "https://teacher.example/v1"),
        api_key=kw.pop("api_key", "sk-t"),
        model="big-model",
        max_tokens=16,
        concurrency=kw.pop("concurrency", 2),
        policy=kw.pop("policy", OutboundPolicy()),
        transport=httpx.MockTransport(handler) if handler is not None else None,
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
LOOPBACK_ALLOWED = OutboundPolicy(allow_http=True, allow_hosts=frozenset({"127.0.0.1"}))


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


# --- a teacher on loopback: the worker, and what it must not let the teacher do ----------------------


@dataclass
class Teacher:
    """A teacher endpoint on 127.0.0.1 whose every answer `behave(handler, n)` writes (n counts from 1)."""

    port: int
    seen: list[dict[str, str]]  # the headers of every request

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@contextmanager
def teacher_server(behave: Callable[[BaseHTTPRequestHandler, int], None]) -> Iterator[Teacher]:
    seen: list[dict[str, str]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
            self.rfile.read(int(self.headers.get("content-length") or 0))
            with lock:
                seen.append({k.lower(): v for k, v in self.headers.items()})
                n = len(seen)
            with suppress(OSError):  # the trainer hung up: what these tests want
                behave(self, n)
            self.close_connection = True

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Teacher(server.server_address[1], seen)
    finally:
        server.shutdown()
        server.server_close()


def answer_with(handler: BaseHTTPRequestHandler, text: str | None, delay_s: float = 0.0) -> None:
    time.sleep(delay_s)
    body = json.dumps(completion(text)).encode()
    handler.send_response(200)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class Worker:
    """A trainer worker over a fresh database; the jobs here end before any training."""

    def __init__(self, tmp: Path, **settings: Any) -> None:
        from adapters.store import AdapterStore
        from core.blobs import BlobStore
        from core.db import Database, migrate
        from core.ids import new_id
        from core.models import Tenant
        from trainer.worker import Worker

        self.settings = Settings(
            data_dir=tmp,
            outbound_allow_http=True,
            outbound_allow_hosts="127.0.0.1",  # type: ignore[arg-type]
            teacher_concurrency=2,
            **settings,
        )
        migrate(self.settings.database_url or "")
        self.db = Database(self.settings.database_url or "")
        self.blobs = BlobStore(self.settings.blob_store_url or "")
        store = AdapterStore(self.settings.adapter_store_url or "", self.settings.cache_dir / "adapters")
        self.tenant = new_id("ten")
        with self.db.session() as s:
            s.add(Tenant(id=self.tenant, name="acme"))
        self.worker = Worker(self.settings, self.db, store, self.blobs, worker_id="w-test")

    def job(self, teacher: dict[str, Any], inputs: int = 4) -> str:
        from trainer import files, jobs

        lines = [json.dumps({"messages": [{"role": "user", "content": f"question {i}?"}]}) for i in range(inputs)]
        upload = files.upload_file(
            self.db, self.blobs, self.tenant, "inputs.jsonl", "\n".join(lines).encode(), "fine-tune"
        )
        # Stored as given: a job queued before the operator's settings changed.
        spec = DistillSpec(teacher=TeacherSpec(**teacher), max_tokens=8)
        job = jobs.submit(
            self.db,
            self.tenant,
            method="distillation",
            model=self.settings.base_model_name,
            adapter_name="lite",
            training_file=upload.id,
            hyperparameters={"max_steps": 1},
            config=spec.to_json(),
            actor="test",
        )
        return job.id

    def run(self, job_id: str) -> Any:
        from trainer import jobs

        assert self.worker.run_once(job_id)
        return jobs.get_job(self.db, self.tenant, job_id)

    def events(self, job_id: str) -> list[str]:
        from trainer import job_records

        return [e.message for e in job_records.list_events(self.db, self.tenant, job_id, limit=100)[0]]


def test_the_worker_sends_a_key_variable_only_to_its_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEACHER_KEY", "sk-from-the-trainer-host")
    with teacher_server(lambda h, _n: answer_with(h, "")) as server:
        env = Worker(tmp_path / "elsewhere", teacher_key_env_allowlist="TEACHER_KEY=api.openai.com")
        elsewhere = env.run(env.job({"model": "m", "base_url": server.url, "api_key_env": "TEACHER_KEY"}))
        assert elsewhere.status == "failed"
        assert elsewhere.error["code"] == "teacher_key_env_not_allowed"
        assert elsewhere.error["param"] == "method.distillation.teacher.api_key_env"
        assert server.seen == []  # refused before anything was sent

        env = Worker(tmp_path / "bound", teacher_key_env_allowlist="TEACHER_KEY=127.0.0.1")
        bound = env.run(env.job({"model": "m", "base_url": server.url, "api_key_env": "TEACHER_KEY"}))
        # The teacher was asked, with the key; its empty answers leave nothing to train on.
        assert bound.error["code"] == "no_training_data", bound.error
        assert {h["authorization"] for h in server.seen} == {"Bearer sk-from-the-trainer-host"}


def test_the_worker_checks_the_binding_again_before_reading_the_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, teacher_key_env_allowlist="K=api.openai.com")  # type: ignore[arg-type]
    with pytest.raises(TailorError) as e:
        distill.teacher_api_key(
            TeacherSpec(model="m", base_url="https://attacker.example/v1", api_key_env="K"), settings
        )
    assert e.value.code == "teacher_key_env_not_allowed"


def big_answer(total: int, sent: list[int]) -> Callable[[BaseHTTPRequestHandler, int], None]:
    """A valid completion of `total` bytes, streamed without a length; `sent` counts what got out."""

    def behave(h: BaseHTTPRequestHandler, _n: int) -> None:
        h.send_response(200)
        h.send_header("content-type", "application/json")
        h.send_header("connection", "close")
        h.end_headers()
        head, tail = b'{"choices": [{"message": {"role": "assistant", "content": "', b'"}}]}'
        h.wfile.write(head)
        chunk = b"x" * 65536
        for _ in range((total - len(head) - len(tail)) // len(chunk)):
            h.wfile.write(chunk)
            sent[0] += len(chunk)
        h.wfile.write(tail)

    return behave


def test_an_answer_over_the_cap_fails_the_job_without_being_read(tmp_path: Path) -> None:
    sent = [0]
    with teacher_server(big_answer(256 * 2**20, sent)) as server:
        env = Worker(tmp_path)
        started = time.monotonic()
        done = env.run(env.job({"model": "m", "base_url": server.url}, inputs=1))
    assert done.status == "failed"
    assert done.error["code"] == "teacher_failed"
    assert done.error["message"] == (
        "the teacher endpoint at 127.0.0.1 answered more than 4 MiB, the most Tailor reads of one answer"
    )
    # Read up to the cap, then the connection went: the rest of the 256 MiB was never sent.
    assert sent[0] < 64 * 2**20, sent
    assert time.monotonic() - started < 30


def test_an_answer_over_the_cap_is_not_held_in_memory() -> None:
    sent = [0]
    with teacher_server(big_answer(64 * 2**20, sent)) as server:
        tracemalloc.start()
        try:
            with pytest.raises(TailorError, match="answered more than 1 MiB"):
                teacher(None, base_url=server.url, policy=LOOPBACK_ALLOWED, max_reply_bytes=2**20).answer([[USER]])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 8 * 2**20, peak
    # A declared length over the cap is refused before any of the body is read.
    capped = {"policy": LOOPBACK_ALLOWED, "max_reply_bytes": 2**20}
    with local_server(lambda _p: Reply(200, b" " * (2**20 + 1))) as declared, pytest.raises(TailorError):
        teacher(None, base_url=f"{declared.url}/v1", **capped).answer([[USER]])


def drip(where: str) -> Callable[[BaseHTTPRequestHandler, int], None]:
    """A valid answer, one byte every 0.1 s: of its headers or of its body. Never silent for long."""

    def behave(h: BaseHTTPRequestHandler, _n: int) -> None:
        body = json.dumps(completion("slow")).encode()
        head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        slow, fast = (head, body) if where == "headers" else (b"", head + body)
        for i in range(len(slow)):
            h.wfile.write(slow[i : i + 1])
            h.wfile.flush()
            time.sleep(0.1)
        h.wfile.write(fast[: len(fast) // 2] if where == "body" else fast)
        h.wfile.flush()
        if where == "body":
            for i in range(len(fast) // 2, len(fast)):
                h.wfile.write(fast[i : i + 1])
                h.wfile.flush()
                time.sleep(0.1)

    return behave


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_teacher_dripping_bytes_is_cut_at_the_request_deadline(where: str) -> None:
    with teacher_server(drip(where)) as server:
        sleeps: list[float] = []
        started = time.monotonic()
        slow = teacher(None, sleeps, base_url=server.url, policy=LOOPBACK_ALLOWED, concurrency=1, timeout_s=0.5)
        with pytest.raises(TailorError) as e:
            slow.answer([[USER]])
        took = time.monotonic() - started
    assert (e.value.status, e.value.code) == (502, "teacher_failed")
    assert e.value.message == "the teacher endpoint at 127.0.0.1 did not answer within 0.5 s"
    # each attempt cut at its 0.5 s, though the teacher never went quiet for a whole read timeout
    assert len(server.seen) == distill.TEACHER_ATTEMPTS and len(sleeps) == distill.TEACHER_ATTEMPTS - 1
    assert took < distill.TEACHER_ATTEMPTS * 0.5 + 2, took


def test_retries_stop_at_the_teacher_phase_deadline() -> None:
    sleeps: list[float] = []
    busy = teacher(
        lambda _r: httpx.Response(503, headers={"retry-after": "20"}), sleeps, concurrency=1, phase_timeout_s=10
    )
    with pytest.raises(TailorError) as e:
        busy.answer([[USER], [USER]])
    assert e.value.message == (
        "the teacher endpoint at teacher.example did not answer all 2 inputs within the teacher phase's limit of 10 s"
    )
    assert sleeps == []  # waiting the 20 s asked for would pass the phase's 10 s: it fails instead
    assert distill.phase_limit_s(2, 4, 120) == distill.MIN_TEACHER_PHASE_S
    assert distill.phase_limit_s(1000, 4, 120) == 2 * 250 * 120


def test_cancelling_stops_the_teacher_phase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer import jobs

    monkeypatch.setattr(remote, "STOP_CHECK_S", 0.0)
    env = Worker(tmp_path)
    job_id: list[str] = []

    def behave(h: BaseHTTPRequestHandler, n: int) -> None:
        if n == 3:
            jobs.cancel_job(env.db, env.tenant, job_id[0], actor="test")
        answer_with(h, f"answer {n}", delay_s=0.1)

    with teacher_server(behave) as server:
        job_id.append(env.job({"model": "m", "base_url": server.url}, inputs=200))
        started = time.monotonic()
        done = env.run(job_id[0])
        took = time.monotonic() - started
    assert done.status == "cancelled"
    assert len(server.seen) < 10, len(server.seen)  # not the 200 inputs
    assert took < 5, took
    assert any("cancelled" in m for m in env.events(job_id[0]))


def test_a_cancelled_teacher_phase_makes_no_further_request() -> None:
    asked: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(1)
        return httpx.Response(200, json=completion("ok"))

    stop = iter([False, False, True])
    with pytest.raises(TrainingCancelled):
        teacher(handler, concurrency=1, should_stop=lambda: next(stop, True), stop_check_s=0).answer([[USER]] * 20)
    assert len(asked) == 1
