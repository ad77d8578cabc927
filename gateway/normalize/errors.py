"""Engine error bodies and stream error events as OpenAI's `ErrorResponse`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from core.errors import error_type_for_status

from .fields import JSON, as_int

# vLLM's 404 for an unknown model ends with "Valid aliases: a, b." listing every name
# the engine serves, i.e. other tenants' adapters. Drop that sentence.
_ALIASES_RE = re.compile(r"\s*Valid aliases:[^\n]*$")
_MAX_MESSAGE = 2000


def _error_fields(body: object) -> tuple[str | None, Any, Any]:
    """(message, param, code) from whatever the engine sent."""
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        return body.strip() or None, None, None
    if not isinstance(body, Mapping):
        return None, None, None
    inner = body.get("error")
    if isinstance(inner, Mapping):  # current vLLM and OpenAI: {"error": {...}}
        return _text(inner.get("message")), inner.get("param"), inner.get("code")
    if isinstance(inner, str):  # {"error": "..."} from some proxies
        return inner, None, None
    if "message" in body:  # older vLLM: {"object": "error", "message", "type", "code"}
        return _text(body.get("message")), body.get("param"), body.get("code")
    if "detail" in body:  # FastAPI's own HTTPException / validation errors
        return _text(body.get("detail")), None, None
    return None, None, None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def error(body: object, status: int, *, replace: Mapping[str, str] | None = None) -> JSON:
    """Any engine error body as a valid OpenAI `ErrorResponse` for HTTP `status`.

    `replace` maps engine-internal names (adapter ids, paths) to what the client may
    see; it is applied to the message and param.
    """
    message, param, code = _error_fields(body)
    message = _ALIASES_RE.sub("", message or "")
    if not message:
        message = f"The inference engine returned an error (HTTP {status})."
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE] + "..."
    param = param if isinstance(param, str) and param else None
    if replace:
        for internal, public in replace.items():
            if internal:
                message = message.replace(internal, public)
                if param is not None:
                    param = param.replace(internal, public)
    return {
        "error": {
            "message": message,
            "type": error_type_for_status(status),
            "param": param,
            # OpenAI codes are strings ("model_not_found"); vLLM repeats the HTTP
            # status as an int there, which says nothing the status does not.
            "code": code if isinstance(code, str) and code and not code.isdigit() else None,
        }
    }


def stream_error(chunk: Mapping[str, Any], *, replace: Mapping[str, str] | None = None) -> JSON | None:
    """The OpenAI error body if this stream `data:` event is an engine error, else None.

    Once a stream's 200 is sent, vLLM reports failures as one more event,
    `data: {"error": {"message", "type", "param", "code": <http status>}}`, followed by
    `data: [DONE]`. OpenAI streams errors the same way (an `error` object in a data
    event), so the event is kept, just normalised.
    """
    inner = chunk.get("error")
    if not isinstance(inner, Mapping) or "choices" in chunk:
        return None
    status = as_int(inner.get("code"))
    if status is None or not 400 <= status <= 599:
        status = 500
    return error(chunk, status, replace=replace)
