"""The body of `POST /v1/responses`: what is accepted, in what ranges, and what is refused.

Ranges follow OpenAI's `CreateResponse` and what vLLM 0.32 accepts on the chat path
(`top_p` 0 is refused, as on chat completions). Fields that need something Tailor does not
offer are refused with a 400 naming them instead of being ignored: a client asking for web
search, background mode or a stored prompt template would otherwise get an answer that
silently did not do what it asked. Unknown fields are refused like on chat completions,
unless the operator lets them through to the engine (`TAILOR_ENGINE_ALLOWED_EXTRA_FIELDS`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.errors import TailorError, bad_request
from gateway.request_policy import MAX_SCHEMA_BYTES, TAILOR_ONLY, Metadata, Name, json_bounds, unknown_parameter

# OpenAI's own lower bound on `max_output_tokens`.
MIN_OUTPUT_TOKENS = 16
MAX_INPUT_ITEMS = 2048
MAX_ID_CHARS = 64

Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]


class TextFormat(BaseModel):
    """`text.format`: plain text, any JSON object, or JSON following a schema."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)
    type: Literal["text", "json_object", "json_schema"]
    name: Name | None = None
    description: str | None = Field(None, max_length=MAX_SCHEMA_BYTES)
    # `schema` shadows a BaseModel attribute: kept under an alias.
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    @field_validator("json_schema", mode="before")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        return json_bounds(value, "schema")

    @model_validator(mode="after")
    def _schema_with_json_schema_only(self) -> TextFormat:
        if self.type == "json_schema" and (self.name is None or self.json_schema is None):
            raise ValueError("a json_schema format needs both name and schema")
        if self.type != "json_schema" and (self.name, self.json_schema, self.description, self.strict) != (None,) * 4:
            raise ValueError(f"name, schema, description and strict belong to the json_schema format, not {self.type}")
        return self


class TextParam(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None  # accepted, not forwarded


class ReasoningParam(BaseModel):
    # Summaries and modes describe reasoning items, which this gateway never produces.
    model_config = ConfigDict(extra="ignore")
    effort: Effort | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


class StreamOptions(BaseModel):
    # Obfuscation pads delta events against a side channel of OpenAI's; nothing to pad here.
    model_config = ConfigDict(extra="ignore")
    include_obfuscation: bool | None = None


class CreateResponseRequest(BaseModel):
    """`extra="allow"`: unknown fields are judged by `engine_extras`."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    model: str = Field(min_length=1, max_length=256)
    # Items are checked one by one by gateway.responses.items, with the item named.
    input: str | list[Any]
    instructions: str | None = None
    previous_response_id: str | None = Field(None, min_length=1, max_length=200)
    store: bool | None = None
    metadata: Metadata | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_output_tokens: Annotated[int, Field(ge=MIN_OUTPUT_TOKENS)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    # vLLM refuses 0 (OpenAI allows it): refused here, as on chat completions.
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    text: TextParam | None = None
    reasoning: ReasoningParam | None = None
    # Checked by `refuse_unsupported`: only the values that ask for nothing unsupported pass.
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    background: bool | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    # Accepted, never forwarded (as on chat completions).
    user: str | None = Field(None, max_length=256)
    safety_identifier: str | None = Field(None, max_length=64)
    prompt_cache_key: str | None = Field(None, max_length=256)
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    service_tier: str | None = Field(None, max_length=32)

    @field_validator("input", mode="before")
    @classmethod
    def _text_or_items(cls, value: Any) -> Any:
        if isinstance(value, str) or (isinstance(value, list) and 0 < len(value) <= MAX_INPUT_ITEMS):
            return value
        raise ValueError(f"input must be a string or a list of 1 to {MAX_INPUT_ITEMS} input items")

    @property
    def stored(self) -> bool:
        return self.store is not False  # OpenAI's default is to store


# Fields of OpenAI's CreateResponse that need something this gateway does not have.
UNSUPPORTED: dict[str, str] = {
    "conversation": "The Conversations API is not offered by this gateway; continue with previous_response_id.",
    "prompt": "Stored prompt templates are not offered by this gateway; send instructions and input instead.",
    "max_tool_calls": "Built-in tools are not offered by this gateway.",
    "context_management": "Context management (compaction) is not offered by this gateway.",
    "moderation": "Moderation is not offered by this gateway.",
    "prompt_cache_options": "Prompt cache options are not offered by this gateway; prefixes are cached per tenant.",
}


def _unsupported(message: str, param: str) -> TailorError:
    return bad_request(message, code="unsupported_parameter", param=param)


def refuse_unsupported(req: CreateResponseRequest) -> None:
    """A 400 naming the first field that asks for something this gateway does not do."""
    if req.background:
        raise _unsupported(
            "Background mode is not offered by this gateway: send the request without background "
            "(stream it to see the answer as it is generated).",
            "background",
        )
    if req.tools:
        kinds = sorted({str(t.get("type")) for t in req.tools})
        raise _unsupported(
            f"Tools are not offered on /v1/responses by this gateway (got {', '.join(kinds)}): built-in tools "
            "(web search, file search, code interpreter, computer use, MCP, image generation) do not exist here, "
            "and function tools are not supported on this route.",
            "tools",
        )
    if req.tool_choice not in (None, "none", "auto"):
        raise _unsupported("tool_choice can only be 'none' or 'auto' here: no tools are offered.", "tool_choice")
    if req.include:
        raise _unsupported(
            f"include is not supported by this gateway (got {', '.join(map(str, req.include))}).", "include"
        )
    if req.truncation == "auto":
        raise _unsupported(
            "truncation 'auto' is not offered: a conversation longer than the model's context is refused. "
            "Start a new conversation or send fewer items.",
            "truncation",
        )
    if req.top_logprobs:
        raise _unsupported("Log probabilities are not offered on /v1/responses by this gateway.", "top_logprobs")
    for name, message in UNSUPPORTED.items():
        if (req.model_extra or {}).get(name) is not None:
            raise _unsupported(message, name)


def engine_extras(req: CreateResponseRequest, allowed: frozenset[str]) -> dict[str, Any]:
    """Unknown fields: forwarded to the engine where the operator allows them, else a 400."""
    out: dict[str, Any] = {}
    for name, value in (req.model_extra or {}).items():
        if name in UNSUPPORTED and value is None:
            continue  # an SDK's explicit null asks for nothing
        if name not in allowed or name in TAILOR_ONLY:
            raise unknown_parameter(name)
        out[name] = value
    return out
