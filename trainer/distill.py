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

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from core.config import Settings
from core.errors import TailorError, bad_request
from core.sealing import seal, unseal
from trainer.datasets import InvalidExample, Message, check_messages, check_text

log = logging.getLogger("tailor.trainer")

MAX_CONTEXT_CHARS = 400_000
MAX_ANSWER_TOKENS = 4096
DEFAULT_ANSWER_TOKENS = 256
# Retries of one teacher request (429, 5xx, connection errors), with backoff between.
TEACHER_ATTEMPTS = 5
MAX_BACKOFF_S = 30.0
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


def _check_url(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad_request("teacher.base_url must be a URL such as https://host/v1.", param=f"{_PARAM}.teacher.base_url")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise bad_request(
            f"teacher.base_url must be an http(s) URL such as https://host/v1 (got {value!r}).",
            param=f"{_PARAM}.teacher.base_url",
        )
    return value.strip().rstrip("/")


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
    base_url = _check_url(raw["base_url"]) if raw.get("base_url") is not None else None
    api_key, api_key_env = raw.get("api_key"), raw.get("api_key_env")
    if base_url is None:
        if api_key is not None or api_key_env is not None:
            which = "api_key" if api_key is not None else "api_key_env"
            raise bad_request(f"teacher.{which} goes with teacher.base_url.", param=f"{p}.{which}")
        return TeacherSpec(model=model)
    if model is None:
        raise bad_request("teacher.model is required with teacher.base_url.", param=f"{p}.model")
    if api_key is not None and api_key_env is not None:
        raise bad_request("Give teacher.api_key or teacher.api_key_env, not both.", param=f"{p}.api_key")
    if api_key is not None and (not isinstance(api_key, str) or not api_key or len(api_key) > 4096):
        raise bad_request("teacher.api_key must be a non-empty string.", param=f"{p}.api_key")
    if api_key_env is not None and (not isinstance(api_key_env, str) or not api_key_env.isidentifier()):
        raise bad_request(
            "teacher.api_key_env must name an environment variable of the trainer hosts.", param=f"{p}.api_key_env"
        )
    sealed = seal(settings, api_key) if api_key else None
    return TeacherSpec(model=model, base_url=base_url, api_key_sealed=sealed, api_key_env=api_key_env)


def teacher_api_key(spec: TeacherSpec, settings: Settings) -> str:
    if spec.api_key_sealed:
        return unseal(settings, spec.api_key_sealed)
    if spec.api_key_env:
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


@dataclass
class LocalTeacher:
    """A model Tailor serves (base, or base + a LoRA adapter), run greedily in this process."""

    model_dir: Path
    adapter_dir: Path | None
    max_tokens: int

    def answer(self, prompts: Sequence[Sequence[Message]]) -> list[str]:
        # Imported here: torch and transformers are only needed on the path that runs them.
        from trainer.evaluate import generate

        return generate(self.model_dir, self.adapter_dir, prompts, max_new_tokens=self.max_tokens)


@dataclass
class RemoteTeacher:
    """Any OpenAI-compatible chat endpoint, called at temperature 0, `concurrency` at a time.

    429, 5xx and connection errors are retried with backoff (honouring Retry-After); any
    other refusal (a bad key, an unknown model) fails at once, because every later request
    would be refused the same way.
    """

    base_url: str
    api_key: str
    model: str
    max_tokens: int
    concurrency: int = 4
    timeout_s: float = 120.0
    transport: httpx.BaseTransport | None = None
    sleep: Callable[[float], None] = time.sleep
    on_progress: Callable[[int, int], None] | None = None

    def answer(self, prompts: Sequence[Sequence[Message]]) -> list[str]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        done, lock = 0, threading.Lock()
        with httpx.Client(
            base_url=self.base_url, headers=headers, timeout=self.timeout_s, transport=self.transport
        ) as client:

            def one(prompt: Sequence[Message]) -> str:
                nonlocal done
                text = self._ask(client, prompt)
                with lock:
                    done += 1
                    if self.on_progress is not None:
                        self.on_progress(done, len(prompts))
                return text

            with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="teacher") as pool:
                return list(pool.map(one, prompts))

    def _ask(self, client: httpx.Client, prompt: Sequence[Message]) -> str:
        body = {"model": self.model, "messages": list(prompt), "max_tokens": self.max_tokens, "temperature": 0}
        delay = 1.0
        for attempt in range(1, TEACHER_ATTEMPTS + 1):
            try:
                r = client.post("/chat/completions", json=body)
            except httpx.TransportError as exc:
                if attempt == TEACHER_ATTEMPTS:
                    raise _teacher_error(f"the teacher at {self.base_url} is unreachable: {exc}") from None
                self.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            if r.status_code == 200:
                return _answer_text(r)
            if (r.status_code == 429 or r.status_code >= 500) and attempt < TEACHER_ATTEMPTS:
                self.sleep(min(_retry_after(r) or delay, MAX_BACKOFF_S))
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            raise _teacher_error(f"the teacher refused a request: HTTP {r.status_code}: {_error_message(r)}")
        raise AssertionError("unreachable")


def _teacher_error(message: str) -> TailorError:
    return TailorError(502, message, code="teacher_failed")


def _answer_text(r: httpx.Response) -> str:
    try:
        content = r.json()["choices"][0]["message"].get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise _teacher_error("the teacher's reply is not an OpenAI chat completion") from None
    return content.strip() if isinstance(content, str) else ""


def _retry_after(r: httpx.Response) -> float | None:
    try:
        return max(0.0, float(r.headers.get("retry-after", "")))
    except ValueError:
        return None


def _error_message(r: httpx.Response) -> str:
    try:
        error = r.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    return str(message or r.text)[:300]


def token_counter(model_dir: Path) -> Callable[[Sequence[Message]], int]:
    """Prompt tokens of a chat for the served model (its chat template, generation prompt on)."""
    from transformers import AutoTokenizer

    from trainer.sft import _render

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return lambda messages: len(_render(tokenizer, messages, add_generation_prompt=True))
