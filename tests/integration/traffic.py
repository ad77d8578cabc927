"""Clients that keep asking a model QUESTION, plain and streamed, while a test changes what serves it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from tests.integration.conftest import QUESTION, TailorServer, TenantKeys

MESSAGES = [{"role": "user", "content": QUESTION}]


@dataclass
class Traffic:
    answers: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def answer(c: openai.OpenAI, model: str, *, stream: bool, **params: Any) -> str:
    """The text of one chat answer to QUESTION; a stream must end with its finish reason."""
    if stream:
        chunks = list(c.chat.completions.create(model=model, messages=MESSAGES, stream=True, **params))
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    reply = c.chat.completions.create(model=model, messages=MESSAGES, **params)
    content = reply.choices[0].message.content
    assert content is not None
    return content


@contextmanager
def traffic(
    server: TailorServer, tenant: TenantKeys, model: str, streams: Sequence[bool], timeout: float, **params: Any
) -> Iterator[Traffic]:
    """A thread per entry of `streams` (streamed or not), each with its own client, calling `model`
    until the block ends; every answer and every failure is recorded."""
    seen = Traffic()
    stop = threading.Event()
    lock = threading.Lock()

    def call(stream: bool) -> None:
        c = server.sdk(tenant, timeout=timeout)
        while not stop.is_set():
            try:
                text = answer(c, model, stream=stream, **params)
            except Exception as exc:  # noqa: BLE001 - any failure is what the test counts
                with lock:
                    seen.failures.append(repr(exc))
            else:
                with lock:
                    seen.answers.append(text)

    workers = [threading.Thread(target=call, args=(stream,)) for stream in streams]
    for w in workers:
        w.start()
    try:
        yield seen
    finally:
        stop.set()
        for w in workers:
            w.join(timeout)


# A cold start takes 20-40 s on an idle 2-core machine, several minutes on a busy one.
START_DEADLINE_S = 600


def first_answer(sdk: openai.OpenAI, model: str, **params: Any) -> httpx.Response:
    """Ask a whole model QUESTION until its engine has started: the SDK retries each 503 after
    its Retry-After by itself; a start slower than its retries is waited out here."""
    deadline = time.monotonic() + START_DEADLINE_S
    while True:
        try:
            return sdk.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, **params).http_response
        except openai.InternalServerError as exc:
            assert exc.response.status_code == 503 and exc.code == "model_starting", exc
            assert time.monotonic() < deadline, "the full model's engine did not start"
