"""Validate response bodies against OpenAI's published OpenAPI file.

Test helper only (never imported by the gateway). The file is OpenAPI 3.1, which is
JSON Schema 2020-12 underneath, except that it still marks many fields with the OpenAPI
3.0 keyword `nullable: true`. A JSON-Schema validator ignores unknown keywords, so read
as-is those fields would reject `null` and we would fail on payloads OpenAI itself
sends. We therefore rewrite `nullable: true` into real null-acceptance once, at load.

Usage:

    from tests.openai_schema import validate
    validate(body, "CreateChatCompletionResponse")   # raises jsonschema.ValidationError

Two names here are not in OpenAI's file. `CreateCompletionStreamResponse`: OpenAI
streams legacy completions as `CreateCompletionResponse` objects, but that schema
requires a non-null `finish_reason`, while every chunk before the last carries
`"finish_reason": null` (OpenAI's own streaming example under `POST /completions`
shows exactly that). A gateway cannot omit a required key nor invent a reason for a
choice that has not finished, so chunks are checked against the same schema with
only `choices[].finish_reason` made nullable. `ChatCompletionStoredMessageList`:
`GET /chat/completions/{id}/messages` lists the request's messages, and OpenAI's own
example there lists a `"role": "user"` message, but `ChatCompletionMessageList` builds its
items on `ChatCompletionResponseMessage`, whose role can only be "assistant". The copy
accepts the roles of request messages and is otherwise the same. `ResponseDeleted`:
`DELETE /responses/{id}` has no component schema; its documented example body
(`{"id", "object": "response", "deleted": true}`) is written down as one.

`BatchRequestInput` and `BatchRequestOutput`: the lines of a batch's input file and of its
output and error files. OpenAI's current file no longer carries them (its API reference still
documents both shapes); they are written down here as its earlier published versions had them
(OpenAPI 2.3.0): an input line is `{"custom_id", "method": "POST", "url", "body"}`; an output
line `{"id", "custom_id", "response": {"status_code", "request_id", "body"} | null, "error":
{"code", "message"} | null}`.

`validate_response_event` checks a Responses stream event twice: against the
`ResponseStreamEvent` union (which, being an anyOf, accepts an event as soon as any variant
does) and against the one variant its `type` names.

One schema is widened in place: `FineTuningJob.status` gains "paused". OpenAI's file lists
`POST /fine_tuning/jobs/{id}/pause` returning a FineTuningJob, and its own example of that
response has `"status": "paused"`, but the status enum stops at the six other states (the
SDK passes the value through all the same).
"""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(
    os.environ.get(
        "OPENAI_OPENAPI_SPEC",
        Path(__file__).resolve().parent / "fixtures" / "openai-openapi" / "openapi.yaml",
    )
)

# The URI the whole document is registered under; the spec's own
# `#/components/schemas/X` refs then resolve inside it.
_SPEC_URI = "urn:tailor:openai-openapi"

# Synthetic schemas this helper adds (see module docstring).
COMPLETION_STREAM = "CreateCompletionStreamResponse"
STORED_MESSAGE_LIST = "ChatCompletionStoredMessageList"
RESPONSE_DELETED = "ResponseDeleted"
BATCH_REQUEST_INPUT = "BatchRequestInput"
BATCH_REQUEST_OUTPUT = "BatchRequestOutput"
_REQUEST_ROLES = ["system", "developer", "user", "assistant", "tool", "function"]

__all__ = [
    "BATCH_REQUEST_INPUT",
    "BATCH_REQUEST_OUTPUT",
    "COMPLETION_STREAM",
    "RESPONSE_DELETED",
    "STORED_MESSAGE_LIST",
    "SchemaMismatch",
    "schema_names",
    "validate",
    "response_stream_events",
    "validate_response_event",
]


class SchemaMismatch(ValidationError):
    """A `ValidationError` whose `str()` is just the readable summary.

    jsonschema's default `str()` dumps the failing (sub)schema, which for OpenAI's
    anyOf-heavy schemas runs to hundreds of lines and hides the point.
    """

    def __str__(self) -> str:
        return self.message


def _load_yaml(path: Path) -> dict[str, Any]:
    # The file is ~3 MB; the C loader parses it in about a second, the pure-Python
    # one takes many times longer.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open("rb") as fh:
        return yaml.load(fh, Loader=loader)  # noqa: S506 - a safe loader either way


def _nullable_to_json_schema(node: Any) -> Any:
    """Rewrite OpenAPI 3.0 `nullable: true` as JSON-Schema null acceptance, in place."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            node[i] = _nullable_to_json_schema(item)
        return node
    if not isinstance(node, dict):
        return node
    for key, value in node.items():
        node[key] = _nullable_to_json_schema(value)
    # OpenAPI 3.0 booleans `exclusiveMinimum: true` mean "minimum is exclusive"; JSON
    # Schema reads a boolean there as the number 1 (True == 1).
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(node.get(exclusive), bool) and node.pop(exclusive) and bound in node:
            node[exclusive] = node.pop(bound)
    if node.pop("nullable", False) is not True:
        return node
    kind = node.get("type")
    if isinstance(kind, str) and "$ref" not in node and "allOf" not in node:
        # Widening `type` keeps error messages short ("1 is not of type 'string',
        # 'null'") where an anyOf wrapper would only say "not valid under any".
        node["type"] = [kind, "null"]
        if "enum" in node and None not in node["enum"]:
            node["enum"] = [*node["enum"], None]
        return node
    # `$ref`/`allOf`/`anyOf` siblings: the constraint lives elsewhere, so accept
    # null beside whatever the node itself accepts.
    return {"anyOf": [node, {"type": "null"}]}


def _widen_schemas(schemas: dict[str, Any]) -> None:
    status = schemas["FineTuningJob"]["properties"]["status"]
    assert "paused" not in status["enum"], "OpenAI's file has the paused status now: drop this"
    status["enum"] = [*status["enum"], "paused"]


def _add_synthetic_schemas(schemas: dict[str, Any]) -> None:
    stream = copy.deepcopy(schemas["CreateCompletionResponse"])
    finish = stream["properties"]["choices"]["items"]["properties"]["finish_reason"]
    finish["type"] = [finish["type"], "null"]
    finish["enum"] = [*finish["enum"], None]
    stream["description"] = "CreateCompletionResponse as streamed (finish_reason null until done)."
    schemas[COMPLETION_STREAM] = stream

    message = copy.deepcopy(schemas["ChatCompletionResponseMessage"])
    message["properties"]["role"]["enum"] = _REQUEST_ROLES
    schemas["ChatCompletionStoredMessage"] = message
    listing = copy.deepcopy(schemas["ChatCompletionMessageList"])
    parts = listing["properties"]["data"]["items"]["allOf"]
    assert parts[0] == {"$ref": "#/components/schemas/ChatCompletionResponseMessage"}, parts[0]
    parts[0] = {"$ref": "#/components/schemas/ChatCompletionStoredMessage"}
    schemas[STORED_MESSAGE_LIST] = listing

    for name in (BATCH_REQUEST_INPUT, BATCH_REQUEST_OUTPUT):
        assert name not in schemas, f"OpenAI's file has {name} again: drop the copy"
    schemas[BATCH_REQUEST_INPUT] = {
        "type": "object",
        "properties": {
            "custom_id": {"type": "string"},
            "method": {"type": "string", "enum": ["POST"]},
            "url": {"type": "string"},
        },
    }
    schemas[BATCH_REQUEST_OUTPUT] = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "custom_id": {"type": "string"},
            "response": {
                "type": ["object", "null"],
                "properties": {
                    "status_code": {"type": "integer"},
                    "request_id": {"type": "string"},
                    "body": {"type": "object"},
                },
            },
            "error": {
                "type": ["object", "null"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    }

    schemas[RESPONSE_DELETED] = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["response"]},
            "deleted": {"type": "boolean", "enum": [True]},
        },
        "required": ["id", "object", "deleted"],
    }


@functools.cache
def _registry() -> tuple[Registry, frozenset[str]]:
    spec = _load_yaml(SPEC_PATH)
    # Only the components are schemas; paths/examples would just cost time.
    components = {"components": {"schemas": spec["components"]["schemas"]}}
    _nullable_to_json_schema(components)
    schemas = components["components"]["schemas"]
    _widen_schemas(schemas)
    _add_synthetic_schemas(schemas)
    resource = Resource.from_contents(components, default_specification=DRAFT202012)
    registry = Registry().with_resource(_SPEC_URI, resource).crawl()
    return registry, frozenset(schemas)


@functools.cache
def _validator(schema_name: str) -> Draft202012Validator:
    registry, names = _registry()
    if schema_name not in names:
        raise KeyError(f"no component schema named {schema_name!r} in {SPEC_PATH}")
    schema = {"$ref": f"{_SPEC_URI}#/components/schemas/{schema_name}"}
    return Draft202012Validator(schema, registry=registry)


def schema_names() -> frozenset[str]:
    """All component names `validate` accepts (OpenAI's plus the synthetic ones)."""
    return _registry()[1]


def _describe(error: ValidationError) -> str:
    message = error.message
    if len(message) > 300:
        message = message[:300] + "..."
    return f"{error.json_path}: {message}"


def validate(instance: Any, schema_name: str) -> None:
    """Raise `jsonschema.ValidationError` unless `instance` is valid `schema_name`.

    The message names every failing JSON path (best match first), e.g.
    `CreateChatCompletionResponse invalid: $.choices[0].message.annotations: None is not
    of type 'array'`.
    """
    validator = _validator(schema_name)
    errors = list(validator.iter_errors(instance))
    if not errors:
        return
    errors.sort(key=lambda e: (len(e.path), e.json_path))
    lines = [_describe(_deepest(e)) for e in errors]
    first = errors[0]
    raise SchemaMismatch(
        f"{schema_name} invalid: " + "; ".join(lines),
        path=first.path,
        schema_path=first.schema_path,
        instance=first.instance,
    )


def _deepest(error: ValidationError) -> ValidationError:
    """For an anyOf/oneOf failure, the branch error that got furthest into the data.

    "X is not valid under any of the given schemas" says nothing; the sub-error from
    the branch that matched the most of the instance says which key is wrong (the
    `{"type": "null"}` branch of a nullable field fails at the field itself, so it
    loses to any error inside the object).
    """
    if not error.context:
        return error
    deepest = max(error.context, key=lambda e: (len(e.absolute_path), e.validator != "type"))
    return _deepest(deepest)


def validate_response_event(event: Any) -> None:
    """A Responses stream event: valid `ResponseStreamEvent`, and valid as the variant its type names."""
    validate(event, "ResponseStreamEvent")
    variants = _event_variants()
    kind = event.get("type") if isinstance(event, dict) else None
    if kind not in variants:
        raise SchemaMismatch(f"ResponseStreamEvent invalid: no variant has type {kind!r}")
    validate(event, variants[kind])


@functools.cache
def _event_variants() -> dict[str, str]:
    """ResponseStreamEvent's variants by the `type` each one fixes."""
    registry, _ = _registry()
    schemas = registry.contents(_SPEC_URI)["components"]["schemas"]
    out = {}
    for ref in schemas["ResponseStreamEvent"]["anyOf"]:
        name = ref["$ref"].rsplit("/", 1)[-1]
        enum = schemas[name].get("properties", {}).get("type", {}).get("enum") or []
        for kind in enum:
            out[kind] = name
    return out


def response_stream_events(text: str) -> list[dict[str, Any]]:
    """The events of a raw Responses stream, each validated: framed as OpenAI frames them (an
    `event:` line naming the data's type, then a `data:` line; no `[DONE]`), numbered from 0."""
    assert text.endswith("\n\n") and "[DONE]" not in text, text[-200:]
    events = []
    for block in text[:-2].split("\n\n"):
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: "), block
        event = json.loads(data[len("data: ") :])
        assert event["type"] == name[len("event: ") :], block
        validate_response_event(event)
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events
