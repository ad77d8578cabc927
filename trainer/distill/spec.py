"""A distillation job's settings (the API's `method.distillation`): the context to distill
away, the teacher that answers and the student that learns (trainer.distill.student),
checked, with the teacher's API key sealed."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import httpx

from core.config import Settings
from core.errors import bad_request
from core.outbound import OutboundPolicy
from core.sealing import seal, unseal
from trainer.distill.student import StudentSpec, parse_student
from trainer.message_checks import InvalidExample, check_messages, check_text
from trainer.records import Message

MAX_CONTEXT_CHARS = 400_000
MAX_ANSWER_TOKENS = 4096
DEFAULT_ANSWER_TOKENS = 256
PARAM = "method.distillation"


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
    student: StudentSpec | None = None  # None: an adapter on the job's model

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
            # Only with a student: jobs without one read as they always have.
            **({"student": self.student.to_json()} if self.student else {}),
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
            student=StudentSpec.from_json(data.get("student")),
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
            # Only with a student: jobs without one read as they always have.
            **({"student": self.student.to_json()} if self.student else {}),
        }


def parse_spec(raw: dict[str, Any], settings: Settings) -> DistillSpec:
    """Validate the API's `method.distillation` object; seals the teacher's API key.

    Raises 400s naming the offending field.
    """
    known = {"system", "examples", "teacher", "max_tokens", "student", "hyperparameters"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise bad_request(
            f"Unknown distillation field {unknown[0]!r}; expected {', '.join(sorted(known))}.",
            param=f"{PARAM}.{unknown[0]}",
        )
    try:
        system = check_text(raw.get("system"), "system", max_chars=MAX_CONTEXT_CHARS)
    except InvalidExample as e:
        raise bad_request(str(e), param=f"{PARAM}.system") from None
    examples: tuple[Message, ...] = ()
    if raw.get("examples") is not None:
        try:
            examples = check_messages(raw["examples"], "examples", max_chars=MAX_CONTEXT_CHARS)
        except InvalidExample as e:
            raise bad_request(str(e), param=f"{PARAM}.examples") from None
        if any(m["role"] == "system" for m in examples):
            raise bad_request("Put the system prompt in `system`, not in examples.", param=f"{PARAM}.examples")
        if examples[-1]["role"] != "assistant":
            raise bad_request(
                "examples are few-shot turns and must end with an assistant answer.", param=f"{PARAM}.examples"
            )
    teacher = _parse_teacher(raw.get("teacher"), settings)
    max_tokens = raw.get("max_tokens", DEFAULT_ANSWER_TOKENS)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_ANSWER_TOKENS:
        raise bad_request(f"max_tokens must be an integer from 1 to {MAX_ANSWER_TOKENS}.", param=f"{PARAM}.max_tokens")
    student = parse_student(raw.get("student"), settings.base_model_path)
    spec = DistillSpec(system=system, examples=examples, teacher=teacher, max_tokens=max_tokens, student=student)
    if not spec.has_context and not teacher.remote and student is None:
        raise bad_request(
            "Distillation needs a context to distill away (system and/or examples), a teacher endpoint "
            "(teacher.base_url) or a smaller student (student): without any, the teacher is the student.",
            param=PARAM,
        )
    return spec


def _parse_teacher(raw: Any, settings: Settings) -> TeacherSpec:
    if raw is None:
        return TeacherSpec()
    p = f"{PARAM}.teacher"
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
            param=f"{PARAM}.teacher.api_key_env",
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
