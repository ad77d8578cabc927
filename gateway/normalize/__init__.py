"""Make vLLM's OpenAI-server output valid against OpenAI's published schema.

vLLM's responses are close to OpenAI's but not valid against
`openai-openapi/openapi.yaml`, and they carry engine internals. Observed on vLLM 0.32
(captured samples live in tests/fixtures/vllm_raw/):

* `null` for optional fields OpenAI types as non-null: `message.annotations`,
  `message.function_call`, `message.audio`, `usage.prompt_tokens_details`,
  `usage.completion_tokens_details`, `system_fingerprint`.
* vLLM-only extras: `stop_reason`, `token_ids`, `routed_experts`, `prompt_logprobs`,
  `prompt_token_ids`, `prompt_text`, `kv_transfer_params`, `ec_transfer_params`,
  `metrics`, `message.reasoning`. Allowed by the schema, but they expose token ids,
  prompts and engine state, so they are dropped.
* `model` is the engine-side name (a LoRA adapter id for tenant traffic), `id` is the
  engine's request id; both are replaced by the gateway's.
* chat `logprobs` lacks the required `refusal` key.
* completion `logprobs` with `echo` has `null` for the first prompt token.
* `finish_reason: "abort"` (and, per vLLM's source, `"repetition"`), not OpenAI values.
* `system_fingerprint` is `vllm-<version>-<hash>`, naming the engine and its version.
* errors: `code` is the integer HTTP status and `type` a Python-ish class name
  (`BadRequestError`, `NotFoundError`, `Bad Request`).

These functions are on the hot path (one call per stream chunk), so each builds the
output object from a fixed whitelist of keys for its object type; nothing walks the
schema at run time. They take parsed JSON and return new dicts; inputs are not mutated.

One module per object type: `chat`, `completions` and `errors`, over the fields they
share (`fields`: counts, finish reasons, usage and the envelope).
"""

from __future__ import annotations

from .chat import chat_chunk, chat_completion
from .completions import completion, completion_chunk
from .errors import error, stream_error

__all__ = [
    "chat_chunk",
    "chat_completion",
    "completion",
    "completion_chunk",
    "error",
    "stream_error",
]
