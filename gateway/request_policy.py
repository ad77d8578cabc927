"""What a tenant's completion request may carry to the engine, and in what ranges.

The one policy for the body fields of `/v1/chat/completions` and `/v1/completions`:

- the request models below declare every field that reaches the engine, each with the
  range OpenAI's API and vLLM 0.32 both accept, plus a few vLLM sampling extensions
  (`top_k`, `min_p`, `repetition_penalty`, `min_tokens`, ...) with ranges of their own;
- `NOT_FORWARDED` names OpenAI fields that are accepted for compatibility but mean nothing
  to a self-hosted engine: they are validated and logged, never sent;
- any other field (`priority`, `request_id`, `cache_salt`, `kv_transfer_params`,
  `chat_template`, `prompt_embeds`, ...) is refused with a 400 naming it, unless the operator
  lists it in `TAILOR_ENGINE_ALLOWED_EXTRA_FIELDS`; then it is forwarded as sent;
- `priority` is Tailor's alone (`TAILOR_ONLY`): refused whatever the operator lists, since
  batch requests are scheduled after interactive ones by it, and only batch requests carry one;
- every engine request carries a `cache_salt` derived from the tenant, so the engine's
  prefix cache is never shared between tenants (no timing side channel);
- the engine body is serialised here, before an engine is leased, so a body that cannot be
  encoded is a 400 that holds nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from core.errors import TailorError, bad_request
from core.metadata import check_metadata

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Token ids fit int32 in every tokenizer; the engine checks them against its vocabulary.
TOKEN_ID_MAX = 2**31 - 1
MAX_LOGIT_BIAS = 300  # entries, as OpenAI
MAX_STOP = 4  # sequences, as OpenAI and vLLM's default VLLM_MAX_STOP_STRINGS
MAX_STOP_CHARS = 256
MAX_STOP_TOKEN_IDS = 64
MAX_TOOLS = 128  # as OpenAI's `functions`
# Tools and JSON schemas become grammars the engine compiles: bound what it is given.
MAX_SCHEMA_BYTES = 100_000
MAX_JSON_DEPTH = 32
MAX_N = 16  # OpenAI allows 128; each choice is a full generation on the engine

NonNegativeTokenId = Annotated[int, Field(ge=0, le=TOKEN_ID_MAX)]
StopString = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_CHARS)]
Name = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


def json_bounds(value: Any, what: str) -> Any:
    """Refuse nested JSON deeper than MAX_JSON_DEPTH or larger than MAX_SCHEMA_BYTES."""
    level, depth = [value], 0
    while level:
        depth += 1
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
        level = [
            child
            for node in level
            if isinstance(node, (dict, list))
            for child in (node.values() if isinstance(node, dict) else node)
        ]
    try:
        size = len(orjson.dumps(value))
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"{what} cannot be encoded as JSON: {exc}") from None
    if size > MAX_SCHEMA_BYTES:
        raise ValueError(f"{what} is {size} bytes; at most {MAX_SCHEMA_BYTES} are accepted")
    return value


# OpenAI's `Metadata`: string keys and values, bounded in count and length (core.metadata).
Metadata = Annotated[dict[str, str], AfterValidator(check_metadata)]


class StreamOptions(BaseModel):
    # Tailor always asks the engine for usage itself; other options are not passed on.
    model_config = ConfigDict(extra="ignore")
    include_usage: bool | None = None


class ChatMessage(BaseModel):
    # Unknown keys (an SDK's `audio: null`, `annotations`, ...) are dropped, not forwarded.
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = Field(None, max_length=256)
    tool_call_id: str | None = Field(None, max_length=256)
    tool_calls: list[dict[str, Any]] | None = Field(None, max_length=MAX_TOOLS)

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, value: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        # Image, audio and file parts make the engine fetch URLs or read files: not offered.
        # Parts are rebuilt, so nothing but their text reaches the engine.
        if not isinstance(value, list):
            return value
        if not all(part.get("type") == "text" and isinstance(part.get("text"), str) for part in value):
            raise ValueError('only text content parts ({"type": "text", "text": "..."}) are accepted')
        return [{"type": "text", "text": part["text"]} for part in value]

    @field_validator("tool_calls")
    @classmethod
    def _bounded_tool_calls(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        return value if value is None else json_bounds(value, "tool_calls")


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    description: str | None = Field(None, max_length=MAX_SCHEMA_BYTES)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)
    name: Name
    description: str | None = Field(None, max_length=MAX_SCHEMA_BYTES)
    # `schema` shadows a BaseModel attribute: kept under an alias.
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class _Sampling(BaseModel):
    """Fields both endpoints share. `extra="allow"`: unknown fields are judged by `engine_fields`."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    model: str = Field(min_length=1, max_length=256)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    # vLLM refuses 0 (OpenAI allows it): refused here, with the same words for both.
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    seed: Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)] | None = None
    stop: StopString | Annotated[list[StopString], Field(min_length=1, max_length=MAX_STOP)] | None = None
    logit_bias: (
        Annotated[
            dict[Annotated[str, StringConstraints(pattern=r"^[0-9]{1,10}$")], Annotated[float, Field(ge=-100, le=100)]],
            Field(max_length=MAX_LOGIT_BIAS),
        ]
        | None
    ) = None
    # vLLM sampling extensions (README "Limits and protection").
    top_k: Annotated[int, Field(ge=-1, le=TOKEN_ID_MAX)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=2)] | None = None
    min_tokens: Annotated[int, Field(ge=0)] | None = None
    ignore_eos: bool | None = None
    stop_token_ids: Annotated[list[NonNegativeTokenId], Field(max_length=MAX_STOP_TOKEN_IDS)] | None = None
    include_stop_str_in_output: bool | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    # Accepted, never forwarded (NOT_FORWARDED).
    user: str | None = Field(None, max_length=256)
    metadata: Metadata | None = None
    store: bool | None = None
    service_tier: str | None = Field(None, max_length=32)
    safety_identifier: str | None = Field(None, max_length=64)
    prompt_cache_key: str | None = Field(None, max_length=256)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    # Accepted, never forwarded.
    modalities: list[Literal["text"]] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None

    @field_validator("tools", "response_format", mode="before")
    @classmethod
    def _bounded(cls, value: Any, info: ValidationInfo) -> Any:
        return json_bounds(value, info.field_name or "this field")


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[NonNegativeTokenId] | list[list[NonNegativeTokenId]]
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool | None = None
    suffix: str | None = None
    # Accepted, never forwarded: vLLM 0.32 has no best_of.
    best_of: Annotated[int, Field(ge=1, le=MAX_N)] | None = None


Kind = Literal["chat", "completion"]
MODELS: dict[Kind, type[_Sampling]] = {"chat": ChatCompletionRequest, "completion": CompletionRequest}

NOT_FORWARDED = frozenset(
    {
        "user",
        "metadata",
        "store",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
        "modalities",
        "verbosity",
        "best_of",
    }
)
# Declared fields Tailor sets itself on every engine request (`cache_salt` too, see engine_payload).
SET_BY_TAILOR = frozenset({"model", "stream_options"})
# Engine fields no tenant may send, whatever TAILOR_ENGINE_ALLOWED_EXTRA_FIELDS says: vLLM schedules
# by `priority` (lower first), and Tailor gives one to batch requests only (engine_payload).
TAILOR_ONLY = frozenset({"priority"})
FORWARDED: dict[Kind, frozenset[str]] = {
    kind: frozenset(model.model_fields) - NOT_FORWARDED - SET_BY_TAILOR for kind, model in MODELS.items()
}
OUTPUT_TOKEN_PARAMS = ("max_tokens", "max_completion_tokens", "min_tokens")
MAX_CLIENT_SALT = 1024


def check_output_cap(body: dict[str, Any], cap: int, params: tuple[str, ...] = OUTPUT_TOKEN_PARAMS) -> None:
    for param in params:
        asked = body.get(param)
        if isinstance(asked, int) and asked > cap:
            raise TailorError(
                400,
                f"{param} is too large: {asked}. This gateway allows at most {cap} output tokens per request.",
                code="invalid_value",
                param=param,
            )


def engine_fields(kind: Kind, body: dict[str, Any], allowed_extra: frozenset[str]) -> dict[str, Any]:
    """The client's fields that go to the engine; a field outside the policy is a 400."""
    forwarded = FORWARDED[kind]
    out: dict[str, Any] = {}
    for name, value in body.items():
        if name in forwarded:
            if value is not None:  # null means omitted (OpenAI); some vLLM fields are not nullable
                out[name] = value
        elif name in allowed_extra and name not in TAILOR_ONLY:
            out[name] = value
        elif name in NOT_FORWARDED or name in SET_BY_TAILOR:
            continue
        else:
            raise unknown_parameter(name)
    salt = out.get("cache_salt")
    if salt is not None and (not isinstance(salt, str) or not 0 < len(salt) <= MAX_CLIENT_SALT):
        message = f"cache_salt must be a string of 1 to {MAX_CLIENT_SALT} characters."
        raise bad_request(message, code="invalid_value", param="cache_salt")
    return out


def unknown_parameter(name: str) -> TailorError:
    """A field outside the policy, in OpenAI's words."""
    return TailorError(400, f"Unrecognized request argument supplied: {name}", code="unknown_parameter", param=name)


class CacheSalts:
    """Per-tenant `cache_salt` values: HMAC-SHA256 of the tenant id under a key derived from
    the sealing secret, so every gateway replica (same TAILOR_SECRET_KEY) and every restart
    computes the same salt, and no tenant can compute another's."""

    MAX_CACHED = 10_000

    def __init__(self, secret: str) -> None:
        self._key = hmac.new(secret.encode("utf-8"), b"tailor engine cache salt v1", hashlib.sha256).digest()
        # An HMAC costs several µs of the hot path; a tenant's salt never changes.
        self._cache: dict[tuple[str, str | None], str] = {}

    def for_tenant(self, tenant_id: str, client_salt: str | None = None) -> str:
        salt = self._cache.get((tenant_id, client_salt))
        if salt is None:
            if len(self._cache) >= self.MAX_CACHED:
                self._cache.clear()
            salt = self._cache[(tenant_id, client_salt)] = self._derive(tenant_id, client_salt)
        return salt

    def _derive(self, tenant_id: str, client_salt: str | None) -> str:
        # A client's own salt (where the operator allows it) partitions its tenant's cache
        # further; it is mixed in, so it can never select another tenant's entries.
        message = tenant_id if client_salt is None else f"{tenant_id}\x00{client_salt}"
        # Hex: within vLLM's 128 characters and free of the characters it refuses.
        return hmac.new(self._key, message.encode("utf-8"), hashlib.sha256).hexdigest()


def engine_payload(
    fields: dict[str, Any], *, model: str, stream: bool, cache_salt: str, priority: int | None = None
) -> bytes:
    """The engine request body, encoded; what cannot be encoded is a 400 naming its field.

    `priority` is given for batch requests only: interactive ones leave it out, so they have
    the engine's default (0), which vLLM schedules before any higher value.
    """
    upstream = {**fields, "model": model, "cache_salt": cache_salt}
    if priority is not None:
        upstream["priority"] = priority
    if stream:
        # Always ask for usage so the log has token counts; the proxy drops the extra
        # chunk again unless the client asked for it.
        upstream["stream_options"] = {"include_usage": True}
    try:
        return orjson.dumps(upstream)
    except orjson.JSONEncodeError:
        raise _unencodable(fields) from None


def _unencodable(fields: dict[str, Any]) -> TailorError:
    # Only on the error path: find the field to name.
    for name, value in fields.items():
        try:
            orjson.dumps(value)
        except orjson.JSONEncodeError as exc:
            return bad_request(f"Invalid value for '{name}': {exc}.", code="invalid_value", param=name)
    return bad_request("The request body cannot be forwarded to the engine.", code="invalid_value")
