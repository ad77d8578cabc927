"""OpenAI's Responses API (`/v1/responses`), served on Tailor's chat-completions path.

Why not vLLM's own `/v1/responses`: vLLM 0.32 serves one (checked against the real engine
with the base model and a LoRA adapter by name, plain and streamed, `text.format`
json_schema included), but it keeps stored responses in the memory of one engine process,
only with `VLLM_ENABLE_RESPONSES_API_STORE=1` (otherwise `store` is silently dropped and
`previous_response_id` is a 404), with no eviction, no tenant scope, no retention and no
redaction; a restarted engine, or the next request landing on another engine, loses the
conversation. It also accepts built-in tools such as `web_search` and answers without ever
running them, and defaults `max_output_tokens` to the whole remaining context. Tailor
therefore keeps conversations itself (gateway.responses.store) and answers each request as
a chat completion on the existing path (gateway.proxy): model routing and adapter
hot-loading, admission and limits, the tenant's cache salt, metering and usage, the
interaction log and feedback by id are the chat path's own, and the engine only ever
sees the chat request Tailor's policy already governs.

A request becomes chat messages (`instructions` as a system message, the previous turns'
items, its own input: gateway.responses.items), the answer a `Response` object
(gateway.responses.objects) or the Responses stream events (gateway.responses.presenter).
The response id is also the interaction id, so feedback names a response by its `id` as it
names a chat completion by its `id`, and a rated response trains like a rated chat answer.

Not offered (a 400 naming the field): tools of any kind, background mode, `include`,
log probabilities, `truncation: "auto"`, conversations, stored prompts, and input other
than text messages (images, files, audio, item references, tool outputs).
"""
