"""How a failed completion is answered: the status codes, headers and error bodies, in Tailor's words."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.responses import Response

from adapters.engines import LoraRef
from core.errors import TailorError

log = logging.getLogger("tailor.gateway")

INTERACTION_HEADER = "x-tailor-interaction-id"
# Status recorded when the client went away before the answer was complete (nginx's).
CLIENT_CLOSED = 499


def json_response(data: Any, status: int, interaction_id: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(data),
        status_code=status,
        media_type="application/json",
        headers={INTERACTION_HEADER: interaction_id, **(headers or {})},
    )


def internal_error() -> TailorError:
    return TailorError(500, "Tailor failed while handling this request; retry shortly.", code="internal_error")


def bad_engine_output() -> TailorError:
    return TailorError(502, "The inference engine sent an answer Tailor could not read.", code="engine_error")


def load_failure(exc: TailorError, lora: LoraRef | None, public_model: str) -> TailorError:
    """An adapter that could not be made resident, in Tailor's words.

    The engine's and the store's own messages name internal adapter ids and file paths:
    they go to the server log only.
    """
    if lora is None or exc.code == "engine_unavailable":
        return exc  # already Tailor's words, naming nothing internal
    log.warning("model %r (adapter %s) could not be loaded: %s", public_model, lora.name, exc.message)
    if exc.status >= 500 and exc.code == "engine_error":
        # The engine failed (5xx) while loading: another try may well succeed.
        return TailorError(
            503,
            f"Model '{public_model}' could not be loaded on an engine; try again shortly.",
            code="model_load_failed",
        )
    # The engine refused the adapter, or its stored files are missing or damaged: retrying
    # will not help until an operator looks at it.
    return TailorError(
        500,
        f"Model '{public_model}' could not be loaded on an engine; retrying will not help until an operator "
        "has looked at it.",
        code="model_load_failed",
    )
