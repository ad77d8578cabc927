"""Distillation: a teacher's answers become the training data of a cheaper adapter.

One job method ("distillation") covers both ways the teacher is reached:

- prompt (context) distillation: the teacher is a model Tailor itself serves (the base model
  or one of the tenant's adapters), run in the trainer worker with the tenant's long
  context (a system prompt and/or few-shot turns) in front of every input. The student
  learns to give the same answers without the context, so every later request stops paying
  for those prompt tokens;
- teacher distillation: the teacher is any OpenAI-compatible endpoint (a larger model
  elsewhere), called with the same context (or none); the student learns its answers.

The worker turns a file of inputs (chat prompts ending with a user turn) into a dataset:
teacher answers for every input, split into training and held-out examples whose
reference is the teacher's answer. Evaluation on that held-out split therefore measures
agreement with the teacher (exact match, token F1), and `context_token_counts` measures
the prompt tokens the context costs per request.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpcore
import httpx

from core import outbound
from core.config import Settings, get_settings
from core.errors import TailorError, bad_request
from core.outbound import OutboundPolicy
from core.sealing import seal, unseal
from trainer.compute.recipe import TrainingCancelled
from trainer.datasets import InvalidExample, Message, check_messages, check_text

log = logging.getLogger("tailor.trainer")

MAX_CONTEXT_CHARS = 400_000
MAX_ANSWER_TOKENS = 4096
DEFAULT_ANSWER_TOKENS = 256
# Retries of one teacher request (429, 5xx, connection errors), with backoff between.
TEACHER_ATTEMPTS = 5
MAX_BACKOFF_S = 30.0
# The most of one teacher answer Tailor reads (an OpenAI chat completion of MAX_ANSWER_TOKENS
# tokens is a few dozen KiB): a larger one fails the job instead of filling the trainer's memory.
MAX_TEACHER_REPLY_BYTES = 4 * 1024 * 1024
# The shortest time the whole teacher phase may take, however few the inputs (see phase_limit_s).
MIN_TEACHER_PHASE_S = 600.0
# How often (at most) the teacher phase asks whether the job was cancelled: each ask is a
# database write (the job's heartbeat), so not once per request of a fast teacher.
STOP_CHECK_S = 2.0
_PARAM = "method.distillation"


# -----------------------------------------------------------------------------
# the job's distillation settings


@dataclass(frozen=True)
class TeacherSpec:
    """Who answers. No base_url: Tailor's own model `model` (None: the job's model)."""

    model: str | None = None
    base_url: str | None = None
    api_key_sealed: str | None = None  # encrypted with core.sealing, never stored in clear
    api_key_env: str | None = None  # or: the trainer host's environment variable to read

    @property
    def remote(self) -> bool:
        return self.base_url is not None

    def describe(self, job_model: str) -> str:
        return f"{self.model} at {self.base_url}" if self.remote else (self.model or job_model)


@dataclass(frozen=True)
class DistillSpec:
    system: str | None = None
    examples: tuple[Message, ...] = ()
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    max_tokens: int = DEFAULT_ANSWER_TOKENS

    @property
    def has_context(self) -> bool:
        return bool(self.system) or bool(self.examples)

    def to_json(self) -> dict[str, Any]:
        t = self.teacher
        return {
            "system": self.system,
            "examples": [dict(m) for m in self.examples],
            "teacher": {
                "model": t.model,
                "base_url": t.base_url,
                "api_key_sealed": t.api_key_sealed,
                "api_key_env": t.api_key_env,
            },
            "max_tokens": self.max_tokens,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DistillSpec:
        t = data.get("teacher") or {}
        return cls(
            system=data.get("system"),
            examples=tuple({"role": m["role"], "content": m["content"]} for m in data.get("examples") or ()),
            teacher=TeacherSpec(
                model=t.get("model"),
                base_url=t.get("base_url"),
                api_key_sealed=t.get("api_key_sealed"),
                api_key_env=t.get("api_key_env"),
            ),
            max_tokens=int(data.get("max_tokens") or DEFAULT_ANSWER_TOKENS),
        )

    def public(self) -> dict[str, Any]:
        """What a job shows its owner: the settings, never the key (sealed or not)."""
        t = self.teacher
        return {
            "teacher": {
                "model": t.model,
                "base_url": t.base_url,
                "api_key": "set" if t.api_key_sealed else None,
                "api_key_env": t.api_key_env,
            },
            "system_chars": len(self.system or ""),
            "examples": len(self.examples),
            "max_tokens": self.max_tokens,
        }


def parse_spec(raw: dict[str, Any], settings: Settings) -> DistillSpec:
    """Validate the API's `method.distillation` object; seals the teacher's API key.

    Raises 400s naming the offending field.
    """
    known = {"system", "examples", "teacher", "max_tokens", "hyperparameters"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise bad_request(
            f"Unknown distillation field {unknown[0]!r}; expected {', '.join(sorted(known))}.",
            param=f"{_PARAM}.{unknown[0]}",
        )
    try:
        system = check_text(raw.get("system"), "system", max_chars=MAX_CONTEXT_CHARS)
    except InvalidExample as e:
        raise bad_request(str(e), param=f"{_PARAM}.system") from None
    examples: tuple[Message, ...] = ()
    if raw.get("examples") is not None:
        try:
            examples = check_messages(raw["examples"], "examples", max_chars=MAX_CONTEXT_CHARS)
        except InvalidExample as e:
            raise bad_request(str(e), param=f"{_PARAM}.examples") from None
        if any(m["role"] == "system" for m in examples):
            raise bad_request("Put the system prompt in `system`, not in examples.", param=f"{_PARAM}.examples")
        if examples[-1]["role"] != "assistant":
            raise bad_request(
                "examples are few-shot turns and must end with an assistant answer.", param=f"{_PARAM}.examples"
            )
    teacher = _parse_teacher(raw.get("teacher"), settings)
    max_tokens = raw.get("max_tokens", DEFAULT_ANSWER_TOKENS)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_ANSWER_TOKENS:
        raise bad_request(f"max_tokens must be an integer from 1 to {MAX_ANSWER_TOKENS}.", param=f"{_PARAM}.max_tokens")
    spec = DistillSpec(system=system, examples=examples, teacher=teacher, max_tokens=max_tokens)
    if not spec.has_context and not teacher.remote:
        raise bad_request(
            "Distillation needs a context to distill away (system and/or examples) or a teacher endpoint "
            "(teacher.base_url): without either, the teacher is the student.",
            param=_PARAM,
        )
    return spec


def _parse_teacher(raw: Any, settings: Settings) -> TeacherSpec:
    if raw is None:
        return TeacherSpec()
    p = f"{_PARAM}.teacher"
    if not isinstance(raw, dict):
        raise bad_request("teacher must be an object: {model, base_url, api_key | api_key_env}.", param=p)
    unknown = sorted(set(raw) - {"model", "base_url", "api_key", "api_key_env"})
    if unknown:
        raise bad_request(f"Unknown teacher field {unknown[0]!r}.", param=f"{p}.{unknown[0]}")
    model = raw.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip() or len(model) > 200):
        raise bad_request("teacher.model must be a model name (1-200 characters).", param=f"{p}.model")
    api_key, api_key_env = raw.get("api_key"), raw.get("api_key_env")
    if raw.get("base_url") is None:
        if api_key is not None or api_key_env is not None:
            which = "api_key" if api_key is not None else "api_key_env"
            raise bad_request(f"teacher.{which} goes with teacher.base_url.", param=f"{p}.{which}")
        return TeacherSpec(model=model)
    if model is None:
        raise bad_request("teacher.model is required with teacher.base_url.", param=f"{p}.model")
    base_url = OutboundPolicy.from_settings(settings).check_url(raw["base_url"], f"{p}.base_url")
    if api_key is not None and api_key_env is not None:
        raise bad_request("Give teacher.api_key or teacher.api_key_env, not both.", param=f"{p}.api_key")
    if api_key is not None and (not isinstance(api_key, str) or not api_key or len(api_key) > 4096):
        raise bad_request("teacher.api_key must be a non-empty string.", param=f"{p}.api_key")
    if api_key_env is not None:
        _check_key_env(api_key_env, base_url, settings)
    sealed = seal(settings, api_key) if api_key else None
    return TeacherSpec(model=model, base_url=base_url, api_key_sealed=sealed, api_key_env=api_key_env)


def _host_key(host: str) -> str:
    return host.strip("[]").removesuffix(".").lower()


def key_env_allowed(name: str, base_url: str, settings: Settings) -> bool:
    """Whether TAILOR_TEACHER_KEY_ENV_ALLOWLIST binds variable `name` to `base_url`'s host."""
    try:
        host = _host_key(httpx.URL(base_url).host)
    except (httpx.InvalidURL, TypeError, ValueError):
        return False
    return bool(host) and f"{name}={host}" in {
        f"{var}={_host_key(h)}" for var, _, h in (e.partition("=") for e in settings.teacher_key_env_allowlist)
    }


def _check_key_env(name: Any, base_url: str | None, settings: Settings) -> None:
    """Only variables the operator listed, each only to the host(s) the operator bound it to:
    any other variable could be one of the operator's own secrets, and any other host one of
    the tenant's choosing, where the trainer would send the value as a bearer token. The
    answer is the same whether or not the variable exists, and whichever of the two is wrong."""
    if not isinstance(name, str) or not isinstance(base_url, str) or not key_env_allowed(name, base_url, settings):
        raise bad_request(
            "teacher.api_key_env must be a variable this server's operator allows for the teacher's host in "
            "TAILOR_TEACHER_KEY_ENV_ALLOWLIST (VAR=host entries; none by default); otherwise give teacher.api_key.",
            param=f"{_PARAM}.teacher.api_key_env",
            code="teacher_key_env_not_allowed",
        )


def teacher_api_key(spec: TeacherSpec, settings: Settings) -> str:
    if spec.api_key_sealed:
        return unseal(settings, spec.api_key_sealed)
    if spec.api_key_env:
        # Again when the job runs, before the value is read: it may have been queued before
        # the list changed.
        _check_key_env(spec.api_key_env, spec.base_url, settings)
        value = os.environ.get(spec.api_key_env)
        if value is None:
            raise bad_request(
                f"The teacher's key variable {spec.api_key_env} is not set on this trainer host.",
                code="teacher_key_missing",
            )
        return value
    return ""


# -----------------------------------------------------------------------------
# context


def with_context(spec: DistillSpec, messages: Sequence[Message]) -> list[Message]:
    """The teacher's prompt: the context's system prompt and few-shot turns, then the input.

    An input with its own system message keeps it, after the context's (chat templates
    expect one system message, first).
    """
    rest = list(messages)
    system = spec.system
    if rest and rest[0]["role"] == "system":
        own = rest.pop(0)["content"]
        system = f"{system}\n\n{own}" if system else own
    head = [{"role": "system", "content": system}] if system else []
    return [*head, *[dict(m) for m in spec.examples], *rest]


def context_token_counts(
    count: Callable[[Sequence[Message]], int], spec: DistillSpec, prompts: Sequence[Sequence[Message]]
) -> dict[str, float]:
    """Mean prompt tokens per request with the context and without: what distillation saves."""
    if not prompts:
        return {}
    with_ctx = sum(count(with_context(spec, p)) for p in prompts) / len(prompts)
    without = sum(count(p) for p in prompts) / len(prompts)
    saved = with_ctx - without
    return {
        "prompt_tokens_with_context": round(with_ctx, 1),
        "prompt_tokens_without_context": round(without, 1),
        "prompt_tokens_saved_per_request": round(saved, 1),
        "prompt_tokens_saved_fraction": round(saved / with_ctx, 4) if with_ctx else 0.0,
    }


# -----------------------------------------------------------------------------
# teachers


class Teacher(Protocol):
    def answer(self, prompts: Sequence[Sequence[Message]]) -> list[str]:
        """One answer per prompt, in order ("" where the teacher gave none)."""
        ...


class Answerer(Protocol):
    def answers(self, model: str, prompts: Sequence[Sequence[Message]], max_tokens: int) -> list[str]:
        """Greedy answers of `model` (a name on the engine), one per prompt, in order."""
        ...


@dataclass
class LocalTeacher:
    """A model Tailor serves (base, or base + one of the tenant's adapters), asked greedily on a
    vLLM engine (trainer.compute.engine), where it answers exactly as it would when served."""

    engine: Answerer
    model: str  # its name on that engine
    max_tokens: int

    def answer(self, prompts: Sequence[Sequence[Message]]) -> list[str]:
        return self.engine.answers(self.model, prompts, self.max_tokens)


def _default_policy() -> OutboundPolicy:
    return OutboundPolicy.from_settings(get_settings())


def phase_limit_s(inputs: int, concurrency: int, timeout_s: float) -> float:
    """How long the whole teacher phase may take: all requests, retries and backoff included.

    A teacher that answers every request within its budget (timeout_s), with no retries,
    is done in ceil(inputs / concurrency) rounds of timeout_s at worst; twice that leaves a
    working but slow or rate-limited teacher room for its retries, while one that uses up
    every request's budget cannot multiply it by TEACHER_ATTEMPTS and the backoff. The floor
    keeps a small job from failing on one slow stretch.
    """
    rounds = math.ceil(max(1, inputs) / max(1, concurrency))
    return max(MIN_TEACHER_PHASE_S, 2 * rounds * timeout_s)


class _Budget(threading.local):
    """The request a teacher thread is making: when its time is up, and whether to give up."""

    deadline: float | None = None
    abort: threading.Event | None = None


_budget = _Budget()


def _bounded(timeout: float | None, timed_out: type[Exception]) -> float | None:
    """One socket operation's timeout, cut to what is left of the request's whole budget."""
    deadline, abort = _budget.deadline, _budget.abort
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0 or (abort is not None and abort.is_set()):
        raise timed_out("the teacher request's time is up")
    return left if timeout is None else min(timeout, left)


class _BudgetedStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the request's deadline.

    httpx's timeouts are per operation: a server sending one byte (of the headers or of
    the body) just before each read times out would hold the request forever.
    """

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self.inner.start_tls(ssl_context, server_hostname, _bounded(timeout, httpcore.ConnectTimeout))
        return _BudgetedStream(tls)

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _BudgetedBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self.inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        timeout = _bounded(timeout, httpcore.ConnectTimeout)
        return _BudgetedStream(self.inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


def _budgeted_transport(policy: OutboundPolicy) -> httpx.BaseTransport:
    """The policy's transport (every connection checked), its connections bounded by _Budget."""
    transport = policy.transport()
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if not isinstance(backend, httpcore.NetworkBackend):
        # httpx or httpcore changed shape: better no teacher than one without a deadline.
        raise RuntimeError("cannot bound teacher connections: unexpected httpx transport")
    pool._network_backend = _BudgetedBackend(backend)  # type: ignore[union-attr]
    return transport


class _TooSlow(Exception):
    """The request used up its whole budget."""


class _Aborted(Exception):
    """Another request failed or the job was cancelled: this one stops too."""


class _StopCheck:
    """Asks `should_stop` (the job's heartbeat) at most every `every_s`, from any thread."""

    def __init__(self, should_stop: Callable[[], bool] | None, every_s: float) -> None:
        self.should_stop, self.every_s = should_stop, every_s
        self.lock = threading.Lock()
        self.last = -math.inf
        self.stopped = False

    def check(self) -> None:
        if self.should_stop is None:
            return
        with self.lock:
            now = time.monotonic()
            if not self.stopped and now - self.last >= self.every_s:
                self.last = now
                self.stopped = bool(self.should_stop())
            if self.stopped:
                raise TrainingCancelled(0)


@dataclass
class _Phase:
    deadline: float
    limit_s: float
    inputs: int
    abort: threading.Event
    stop: _StopCheck


@dataclass
class RemoteTeacher:
    """Any OpenAI-compatible chat endpoint, called at temperature 0, `concurrency` at a time.

    The endpoint is the tenant's choice, so it is reached only through the outbound policy
    (checked again here: the job may have been queued before the policy changed), and what
    it answers never reaches the job's error: that says, in Tailor's words, which host
    answered which status. 429, 5xx, connection errors and timeouts are retried with
    backoff (honouring Retry-After); any other answer (a bad key, an unknown model, a
    redirect, an answer over MAX_TEACHER_REPLY_BYTES) fails at once, because every later
    request would get the same.

    Nothing the endpoint does can hold the trainer: each request has `timeout_s` in all
    (connecting, sending, the headers and the body; httpx's per-read timeout applies
    within it), the whole phase has phase_limit_s (or `phase_timeout_s`), an answer is read
    only up to MAX_TEACHER_REPLY_BYTES, and `should_stop` (true once the job is cancelled)
    is asked before each request and after each answer: then TrainingCancelled is raised
    and the requests not yet made are not made.
    """

    base_url: str
    api_key: str
    model: str
    max_tokens: int
    concurrency: int = 4
    timeout_s: float = 120.0
    policy: OutboundPolicy = field(default_factory=_default_policy)
    transport: httpx.BaseTransport | None = None  # tests: replaces the network, not the URL check
    sleep: Callable[[float], None] = time.sleep
    on_progress: Callable[[int, int], None] | None = None
    should_stop: Callable[[], bool] | None = None
    stop_check_s: float | None = None  # None: STOP_CHECK_S
    phase_timeout_s: float | None = None  # None: phase_limit_s
    max_reply_bytes: int = MAX_TEACHER_REPLY_BYTES

    @property
    def host(self) -> str:
        return httpx.URL(self.base_url).host

    def answer(self, prompts: Sequence[Sequence[Message]]) -> list[str]:
        base_url = self.policy.check_url(self.base_url, f"{_PARAM}.teacher.base_url")
        # No compression: what is read is what is counted against max_reply_bytes.
        headers = {"Accept-Encoding": "identity"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        limit_s = self.phase_timeout_s or phase_limit_s(len(prompts), self.concurrency, self.timeout_s)
        phase = _Phase(
            deadline=time.monotonic() + limit_s,
            limit_s=limit_s,
            inputs=len(prompts),
            abort=threading.Event(),
            stop=_StopCheck(self.should_stop, STOP_CHECK_S if self.stop_check_s is None else self.stop_check_s),
        )
        phase.stop.check()
        done, lock = 0, threading.Lock()
        transport = self.transport or _budgeted_transport(self.policy)
        with self.policy.client(
            transport=transport, base_url=base_url, headers=headers, timeout=self.timeout_s
        ) as client:

            def one(prompt: Sequence[Message]) -> str:
                nonlocal done
                text = self._ask(client, prompt, phase)
                with lock:
                    done += 1
                    if self.on_progress is not None:
                        self.on_progress(done, len(prompts))
                phase.stop.check()
                return text

            with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="teacher") as pool:
                futures = [pool.submit(one, p) for p in prompts]
                try:
                    wait(futures, return_when=FIRST_EXCEPTION)
                    failures = [f.exception() for f in futures if f.done() and not f.cancelled()]
                    failures = [e for e in failures if e is not None and not isinstance(e, _Aborted)]
                    if failures:
                        # A cancellation wins over the failures it caused elsewhere.
                        raise next((e for e in failures if isinstance(e, TrainingCancelled)), failures[0])
                    return [f.result() for f in futures]
                finally:
                    # The requests not started are not made; those in flight stop at their next read.
                    phase.abort.set()
                    for f in futures:
                        f.cancel()

    def _ask(self, client: httpx.Client, prompt: Sequence[Message], phase: _Phase) -> str:
        body = {"model": self.model, "messages": list(prompt), "max_tokens": self.max_tokens, "temperature": 0}
        delay = 1.0
        for attempt in range(1, TEACHER_ATTEMPTS + 1):
            if phase.abort.is_set():
                raise _Aborted
            phase.stop.check()
            now = time.monotonic()
            if now >= phase.deadline:
                raise self._phase_over(phase)
            try:
                status, r = self._post(client, body, min(now + self.timeout_s, phase.deadline), phase.abort)
            except _TooSlow:
                if phase.abort.is_set():
                    raise _Aborted from None
                if time.monotonic() >= phase.deadline:
                    raise self._phase_over(phase) from None
                if attempt == TEACHER_ATTEMPTS:
                    raise _teacher_error(
                        f"the teacher endpoint at {self.host} did not answer within {self.timeout_s:g} s"
                    ) from None
                pause = delay
            except httpx.HTTPError as exc:
                if phase.abort.is_set():
                    raise _Aborted from None
                # A refusal by the policy will not change on retry; a network failure may.
                if attempt == TEACHER_ATTEMPTS or outbound.refusal(exc) is not None:
                    reason = outbound.failure_reason(exc)
                    raise _teacher_error(f"the teacher endpoint at {self.host} is unreachable: {reason}") from None
                pause = delay
            else:
                if isinstance(r, bytes):
                    return _answer_text(r)
                if not ((status == 429 or status >= 500) and attempt < TEACHER_ATTEMPTS):
                    redirect = " (redirects are not followed)" if r.is_redirect else ""
                    raise _teacher_error(f"the teacher endpoint at {self.host} answered HTTP {status}{redirect}")
                pause = min(_retry_after(r) or delay, MAX_BACKOFF_S)
            if time.monotonic() + pause >= phase.deadline:
                raise self._phase_over(phase)
            self.sleep(pause)
            delay = min(delay * 2, MAX_BACKOFF_S)
        raise AssertionError("unreachable")

    def _post(
        self, client: httpx.Client, body: dict[str, Any], deadline: float, abort: threading.Event
    ) -> tuple[int, httpx.Response | bytes]:
        """One request, read within `deadline` and max_reply_bytes: (200, its body) or (status, response)."""
        _budget.deadline, _budget.abort = deadline, abort
        try:
            with client.stream("POST", "/chat/completions", json=body) as r:
                if r.status_code != 200:
                    return r.status_code, r  # its body is never read: nothing of it is used
                if r.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
                    raise _teacher_error(
                        f"the teacher endpoint at {self.host} answered compressed; Tailor asks for no compression"
                    )
                declared = r.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self.max_reply_bytes:
                    raise self._too_large()
                chunks, size = [], 0
                for chunk in r.iter_bytes():  # not decoded: any content-encoding was refused above
                    size += len(chunk)
                    if size > self.max_reply_bytes:
                        raise self._too_large()
                    if time.monotonic() >= deadline:
                        raise _TooSlow
                    if abort.is_set():
                        raise _Aborted
                    chunks.append(chunk)
                return 200, b"".join(chunks)
        except httpx.TimeoutException:
            # Cut by the request's budget (_bounded), not by one slow read: its time is up.
            if abort.is_set() or time.monotonic() >= deadline - 0.05:
                raise _TooSlow from None
            raise
        finally:
            _budget.deadline = _budget.abort = None

    def _too_large(self) -> TailorError:
        return _teacher_error(
            f"the teacher endpoint at {self.host} answered more than {_size(self.max_reply_bytes)}, "
            "the most Tailor reads of one answer"
        )

    def _phase_over(self, phase: _Phase) -> TailorError:
        return _teacher_error(
            f"the teacher endpoint at {self.host} did not answer all {phase.inputs} inputs within the "
            f"teacher phase's limit of {phase.limit_s:g} s"
        )


def _size(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n} bytes"


def _teacher_error(message: str) -> TailorError:
    return TailorError(502, message, code="teacher_failed")


def _answer_text(body: bytes) -> str:
    try:
        content = json.loads(body)["choices"][0]["message"].get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise _teacher_error("the teacher's reply is not an OpenAI chat completion") from None
    return content.strip() if isinstance(content, str) else ""


def _retry_after(r: httpx.Response) -> float | None:
    try:
        return max(0.0, float(r.headers.get("retry-after", "")))
    except ValueError:
        return None


def token_counter(model_dir: Path) -> Callable[[Sequence[Message]], int]:
    """Prompt tokens of a chat for the served model (its chat template, generation prompt on)."""
    from transformers import AutoTokenizer

    from trainer.compute.encoding import render

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return lambda messages: len(render(tokenizer, messages, add_generation_prompt=True))
