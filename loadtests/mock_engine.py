"""An engine that answers at once: what is left of a request's latency is the gateway's own.

    python -m loadtests.mock_engine --port 8100 --served-name SmolLM2-135M-Instruct --api-key KEY

It speaks as much of vLLM's OpenAI server as Tailor uses (health, model list, runtime LoRA
load and unload, chat and text completions, plain and streamed, prompt log-probabilities) and
does no model work: every answer is the same few tokens, built once, and every prompt token has
log-probability -1. A raw ASGI app on uvicorn with uvloop and httptools,
so that it costs a small fraction of what the gateway in front of it costs per request and the
gap between calling it directly and through Tailor is Tailor's.
"""

from __future__ import annotations

import argparse
import hmac
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ANSWER = "The capital of France is Paris."
PROMPT_TOKENS = 24
COMPLETION_TOKENS = 8
# Content pieces of a streamed answer: enough chunks that per-chunk costs show.
STREAM_PIECES = ("The", " capital", " of", " France", " is", " Paris", ".", "")
CHAT_PATH = "/v1/chat/completions"
# Per route: the answers' id, and their `object` whole and as stream chunks.
_KINDS = {
    CHAT_PATH: ("chatcmpl-mock", "chat.completion", "chat.completion.chunk"),
    "/v1/completions": ("cmpl-mock", "text_completion", "text_completion"),
}


def _reply(path: str, model: str, created: int, choice: dict[str, Any], *, chunk: bool) -> dict[str, Any]:
    """OpenAI's envelope around one choice: of a whole answer, or of one chunk of a stream."""
    answer_id, whole, streamed = _KINDS[path]
    kind = streamed if chunk else whole
    return {"id": answer_id, "object": kind, "created": created, "model": model, "choices": [choice]}


def _usage() -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
    }


class MockEngine:
    def __init__(self, served_name: str, api_key: str | None) -> None:
        self.served_name = served_name
        # (path, model, stream, include_usage) -> the encoded answer, built on first use.
        self.answers: dict[tuple[str, str, bool, bool], list[bytes]] = {}
        self.api_key = api_key
        self.loras: set[str] = set()

    def authorised(self, scope: Scope) -> bool:
        if not self.api_key:
            return True
        got = dict(scope["headers"]).get(b"authorization", b"")
        return hmac.compare_digest(got, b"Bearer " + self.api_key.encode())

    def models(self) -> dict[str, Any]:
        cards = [{"id": self.served_name, "object": "model", "created": 0, "owned_by": "vllm", "parent": None}]
        cards += [
            {"id": name, "object": "model", "created": 0, "owned_by": "vllm", "parent": self.served_name}
            for name in sorted(self.loras)
        ]
        return {"object": "list", "data": cards}

    def answer(self, path: str, model: str, stream: bool, include_usage: bool) -> list[bytes]:
        """The body (or the stream's events) for this kind of request, built once per kind."""
        if stream:
            return self.chunks(path, model, include_usage)
        choice: dict[str, Any]
        if path == CHAT_PATH:
            choice = {"index": 0, "message": {"role": "assistant", "content": ANSWER}}
        else:
            choice = {"index": 0, "text": ANSWER}
        choice |= {"finish_reason": "stop", "logprobs": None}
        return [orjson.dumps({**_reply(path, model, int(time.time()), choice, chunk=False), "usage": _usage()})]

    def chunks(self, path: str, model: str, include_usage: bool) -> list[bytes]:
        created = int(time.time())
        events: list[dict[str, Any]] = []
        last = len(STREAM_PIECES) - 1
        for i, piece in enumerate(STREAM_PIECES):
            choice: dict[str, Any]
            if path == CHAT_PATH:
                delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                choice = {"index": 0, "delta": delta}
            else:
                choice = {"index": 0, "text": piece}
            choice |= {"finish_reason": "stop" if i == last else None, "logprobs": None}
            events.append(_reply(path, model, created, choice, chunk=True))
        if include_usage:
            events.append({**events[-1], "choices": [], "usage": _usage()})
        return [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]

    def scored(self, request: dict[str, Any]) -> dict[str, Any]:
        """A text completion with `prompt_logprobs` (how a trainer's evaluation scores answers):
        every prompt token at log-probability -1, keyed by its id as vLLM does (the first: None).
        The prompt must be token ids, as the evaluation sends it."""
        ids = [int(t) for t in request.get("prompt") or []]
        logprobs = [None] + [{str(t): {"logprob": -1.0, "rank": 1, "decoded_token": ""}} for t in ids[1:]]
        choice = {"index": 0, "text": ANSWER, "finish_reason": "length", "logprobs": None, "prompt_logprobs": logprobs}
        reply = _reply(
            "/v1/completions", str(request.get("model", self.served_name)), int(time.time()), choice, chunk=False
        )
        return {**reply, "usage": _usage()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = (await receive())["type"]
                await send({"type": event + ".complete"})  # lifespan.startup / lifespan.shutdown
                if event == "lifespan.shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path, method = scope["path"], scope["method"]
        if path == "/health":
            await _send(send, 200, b"")
            return
        if not self.authorised(scope):
            await _json(send, 401, {"error": "Unauthorized"})
            return
        if method == "GET" and path == "/v1/models":
            await _json(send, 200, self.models())
        elif method == "POST" and path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            name = str(orjson.loads(body or b"{}").get("lora_name", ""))
            if path.startswith("/v1/load"):
                self.loras.add(name)
            else:
                self.loras.discard(name)
            await _send(send, 200, b"Success", b"text/plain")
        elif method == "POST" and path in _KINDS:
            request = orjson.loads(body or b"{}")
            if request.get("prompt_logprobs") is not None:
                await _send(send, 200, orjson.dumps(self.scored(request)))
                return
            model = str(request.get("model", self.served_name))
            stream = bool(request.get("stream"))
            usage = bool((request.get("stream_options") or {}).get("include_usage")) if stream else False
            key = (path, model, stream, usage)
            if key not in self.answers:
                self.answers[key] = self.answer(path, model, stream, usage)
            if stream:
                await _stream(send, self.answers[key])
            else:
                await _send(send, 200, self.answers[key][0])
        else:
            await _json(send, 404, {"error": f"no route {method} {path}"})


async def _send(send: Send, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, payload: dict[str, Any]) -> None:
    await _send(send, status, orjson.dumps(payload))


async def _stream(send: Send, chunks: list[bytes]) -> None:
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m loadtests.mock_engine")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-name", required=True, help="the base model name it answers to (vLLM's)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("VLLM_API_KEY"),
        help="required as a Bearer key on /v1 routes, like vLLM's (default: VLLM_API_KEY, as vLLM reads it)",
    )
    args = parser.parse_args(argv)
    app = MockEngine(args.served_name, args.api_key)
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="warning", access_log=False, loop="uvloop", http="httptools"
    )


if __name__ == "__main__":
    main()
