"""The one error type of Tailor.

Everything that decides to refuse a request raises `TailorError`; the gateway turns it
into OpenAI's error body (`{"error": {"message", "type", "param", "code"}}`) in one place.
Plain code (adapters, trainer) raises it too, so the same refusal reads the same from the
CLI, the admin API and the OpenAI routes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# OpenAI's `type` values for each HTTP status, as its SDKs and docs use them.
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


def error_type_for_status(status: int) -> str:
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    return "invalid_request_error" if status < 500 else "server_error"


@dataclass
class TailorError(Exception):
    status: int
    message: str
    code: str | None = None
    param: str | None = None
    type: str | None = None
    headers: dict[str, str] | None = None  # e.g. Retry-After on a 429

    def __post_init__(self) -> None:
        super().__init__(self.message)
        if self.type is None:
            self.type = error_type_for_status(self.status)

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, *, code: str = "invalid_request", param: str | None = None) -> TailorError:
    return TailorError(400, message, code=code, param=param)


def not_found(message: str, *, code: str = "not_found", param: str | None = None) -> TailorError:
    return TailorError(404, message, code=code, param=param)


def conflict(message: str, *, code: str = "conflict", param: str | None = None) -> TailorError:
    return TailorError(409, message, code=code, param=param)


def unavailable(message: str, *, code: str = "engine_unavailable") -> TailorError:
    return TailorError(503, message, code=code)


def invalid_body(errors: Sequence[Mapping[str, Any]]) -> TailorError:
    """A 400 naming the first of pydantic's validation `errors` (FastAPI's or a model's own):
    its field as `param`, its message after OpenAI's "Invalid value for '...'"."""
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    param = ".".join(loc) or None
    message = first.get("msg", "Invalid request body.")
    if first.get("type") == "json_invalid":
        message, param = "We could not parse the JSON body of your request.", None
    elif param:
        message = f"Invalid value for '{param}': {message}"
    return TailorError(400, message, code="invalid_request", param=param)
