"""The remote teacher: any OpenAI-compatible chat endpoint, asked with retries, within a
deadline per request and per phase, and stopped when the job is cancelled."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import httpx

from core import outbound
from core.config import get_settings
from core.errors import TailorError
from core.outbound import OutboundPolicy
from trainer.compute.recipe import TrainingCancelled
from trainer.distill.deadline import budget, budgeted_transport
from trainer.distill.spec import PARAM
from trainer.records import Message

# Retries of one teacher request (429, 5xx, connection errors), with backoff between.
TEACHER_ATTEMPTS = 5
MAX_BACKOFF_S = 30.0
# The most of one teacher answer Tailor reads (an OpenAI chat completion of MAX_ANSWER_TOKENS
# tokens is a few dozen KiB): a larger one fails the job instead of filling the trainer's memory.
MAX_TEACHER_REPLY_BYTES = 4 * 1024 * 1024
# The shortest time the whole teacher phase may take, however few the inputs (see phase_limit_s).
MIN_TEACHER_PHASE_S = 600.0
# How often (at most) the teacher phase asks whether the job was cancelled: each ask is a
# database write (the job's heartbeat), so not once per request of a fast teacher.
STOP_CHECK_S = 2.0


def _default_policy() -> OutboundPolicy:
    return OutboundPolicy.from_settings(get_settings())


def phase_limit_s(inputs: int, concurrency: int, timeout_s: float) -> float:
    """How long the whole teacher phase may take: all requests, retries and backoff included.

    A teacher that answers every request within its budget (timeout_s), with no retries,
    is done in ceil(inputs / concurrency) rounds of timeout_s at worst; twice that leaves a
    working but slow or rate-limited teacher room for its retries, while one that uses up
    every request's budget cannot multiply it by TEACHER_ATTEMPTS and the backoff. The floor
    keeps a small job from failing on one slow stretch.
    """
    rounds = math.ceil(max(1, inputs) / max(1, concurrency))
    return max(MIN_TEACHER_PHASE_S, 2 * rounds * timeout_s)


class _TooSlow(Exception):
    """The request used up its whole budget."""


class _Aborted(Exception):
    """Another request failed or the job was cancelled: this one stops too."""


class _StopCheck:
    """Asks `should_stop` (the job's heartbeat) at most every `every_s`, from any thread."""

    def __init__(self, should_stop: Callable[[], bool] | None, every_s: float) -> None:
        self.should_stop, self.every_s = should_stop, every_s
        self.lock = threading.Lock()
        self.last = -math.inf
        self.stopped = False

    def check(self) -> None:
        if self.should_stop is None:
            return
        with self.lock:
            now = time.monotonic()
            if not self.stopped and now - self.last >= self.every_s:
                self.last = now
                self.stopped = bool(self.should_stop())
            if self.stopped:
                raise TrainingCancelled(0)


@dataclass
class _Phase:
    deadline: float
    limit_s: float
    inputs: int
    abort: threading.Event
    stop: _StopCheck


@dataclass
class RemoteTeacher:
    """Any OpenAI-compatible chat endpoint, called at temperature 0, `concurrency` at a time.

    The endpoint is the tenant's choice, so it is reached only through the outbound policy
    (checked again here: the job may have been queued before the policy changed), and what
    it answers never reaches the job's error: that says, in Tailor's words, which host
    answered which status. 429, 5xx, connection errors and timeouts are retried with
    backoff (honouring Retry-After); any other answer (a bad key, an unknown model, a
    redirect, an answer over MAX_TEACHER_REPLY_BYTES) fails at once, because every later
    request would get the same.

    Nothing the endpoint does can hold the trainer: each request has `timeout_s` in all
    (connecting, sending, the headers and the body; httpx's per-read timeout applies
    within it), the whole phase has phase_limit_s (or `phase_timeout_s`), an answer is read
    only up to MAX_TEACHER_REPLY_BYTES, and `should_stop` (true once the job is cancelled)
    is asked before each request and after each answer: then TrainingCancelled is raised
    and the requests not yet made are not made.
    """

    base_url: str
    api_key: str
    model: str
    max_tokens: int
    concurrency: int = 4
    timeout_s: float = 120.0
    policy: OutboundPolicy = field(default_factory=_default_policy)
    transport: httpx.BaseTransport | None = None  # tests: replaces the network, not the URL check
    sleep: Callable[[float], None] = time.sleep
    on_progress: Callable[[int, int], None] | None = None
    should_stop: Callable[[], bool] | None = None
    stop_check_s: float | None = None  # None: STOP_CHECK_S
    phase_timeout_s: float | None = None  # None: phase_limit_s
    max_reply_bytes: int = MAX_TEACHER_REPLY_BYTES

    @property
    def host(self) -> str:
        return httpx.URL(self.base_url).host

    def answer(self, prompts: Sequence[Sequence[Message]]) -> list[str]:
        base_url = self.policy.check_url(self.base_url, f"{PARAM}.teacher.base_url")
        # No compression: what is read is what is counted against max_reply_bytes.
        headers = {"Accept-Encoding": "identity"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        limit_s = self.phase_timeout_s or phase_limit_s(len(prompts), self.concurrency, self.timeout_s)
        phase = _Phase(
            deadline=time.monotonic() + limit_s,
            limit_s=limit_s,
            inputs=len(prompts),
            abort=threading.Event(),
            stop=_StopCheck(self.should_stop, STOP_CHECK_S if self.stop_check_s is None else self.stop_check_s),
        )
        phase.stop.check()
        done, lock = 0, threading.Lock()
        transport = self.transport or budgeted_transport(self.policy)
        with self.policy.client(
            transport=transport, base_url=base_url, headers=headers, timeout=self.timeout_s
        ) as client:

            def one(prompt: Sequence[Message]) -> str:
                nonlocal done
                text = self._ask(client, prompt, phase)
                with lock:
                    done += 1
                    if self.on_progress is not None:
                        self.on_progress(done, len(prompts))
                phase.stop.check()
                return text

            with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="teacher") as pool:
                futures = [pool.submit(one, p) for p in prompts]
                try:
                    wait(futures, return_when=FIRST_EXCEPTION)
                    failures = [f.exception() for f in futures if f.done() and not f.cancelled()]
                    failures = [e for e in failures if e is not None and not isinstance(e, _Aborted)]
                    if failures:
                        # A cancellation wins over the failures it caused elsewhere.
                        raise next((e for e in failures if isinstance(e, TrainingCancelled)), failures[0])
                    return [f.result() for f in futures]
                finally:
                    # The requests not started are not made; those in flight stop at their next read.
                    phase.abort.set()
                    for f in futures:
                        f.cancel()

    def _ask(self, client: httpx.Client, prompt: Sequence[Message], phase: _Phase) -> str:
        body = {"model": self.model, "messages": list(prompt), "max_tokens": self.max_tokens, "temperature": 0}
        delay = 1.0
        for attempt in range(1, TEACHER_ATTEMPTS + 1):
            if phase.abort.is_set():
                raise _Aborted
            phase.stop.check()
            now = time.monotonic()
            if now >= phase.deadline:
                raise self._phase_over(phase)
            try:
                status, r = self._post(client, body, min(now + self.timeout_s, phase.deadline), phase.abort)
            except _TooSlow:
                if phase.abort.is_set():
                    raise _Aborted from None
                if time.monotonic() >= phase.deadline:
                    raise self._phase_over(phase) from None
                if attempt == TEACHER_ATTEMPTS:
                    raise _teacher_error(
                        f"the teacher endpoint at {self.host} did not answer within {self.timeout_s:g} s"
                    ) from None
                pause = delay
            except httpx.HTTPError as exc:
                if phase.abort.is_set():
                    raise _Aborted from None
                # A refusal by the policy will not change on retry; a network failure may.
                if attempt == TEACHER_ATTEMPTS or outbound.refusal(exc) is not None:
                    reason = outbound.failure_reason(exc)
                    raise _teacher_error(f"the teacher endpoint at {self.host} is unreachable: {reason}") from None
                pause = delay
            else:
                if isinstance(r, bytes):
                    return _answer_text(r)
                if not ((status == 429 or status >= 500) and attempt < TEACHER_ATTEMPTS):
                    redirect = " (redirects are not followed)" if r.is_redirect else ""
                    raise _teacher_error(f"the teacher endpoint at {self.host} answered HTTP {status}{redirect}")
                pause = min(_retry_after(r) or delay, MAX_BACKOFF_S)
            if time.monotonic() + pause >= phase.deadline:
                raise self._phase_over(phase)
            self.sleep(pause)
            delay = min(delay * 2, MAX_BACKOFF_S)
        raise AssertionError("unreachable")

    def _post(
        self, client: httpx.Client, body: dict[str, Any], deadline: float, abort: threading.Event
    ) -> tuple[int, httpx.Response | bytes]:
        """One request, read within `deadline` and max_reply_bytes: (200, its body) or (status, response)."""
        budget.deadline, budget.abort = deadline, abort
        try:
            with client.stream("POST", "/chat/completions", json=body) as r:
                if r.status_code != 200:
                    return r.status_code, r  # its body is never read: nothing of it is used
                if r.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
                    raise _teacher_error(
                        f"the teacher endpoint at {self.host} answered compressed; Tailor asks for no compression"
                    )
                declared = r.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self.max_reply_bytes:
                    raise self._too_large()
                chunks, size = [], 0
                for chunk in r.iter_bytes():  # not decoded: any content-encoding was refused above
                    size += len(chunk)
                    if size > self.max_reply_bytes:
                        raise self._too_large()
                    if time.monotonic() >= deadline:
                        raise _TooSlow
                    if abort.is_set():
                        raise _Aborted
                    chunks.append(chunk)
                return 200, b"".join(chunks)
        except httpx.TimeoutException:
            # Cut by the request's budget (_bounded), not by one slow read: its time is up.
            if abort.is_set() or time.monotonic() >= deadline - 0.05:
                raise _TooSlow from None
            raise
        finally:
            budget.deadline = budget.abort = None

    def _too_large(self) -> TailorError:
        return _teacher_error(
            f"the teacher endpoint at {self.host} answered more than {_size(self.max_reply_bytes)}, "
            "the most Tailor reads of one answer"
        )

    def _phase_over(self, phase: _Phase) -> TailorError:
        return _teacher_error(
            f"the teacher endpoint at {self.host} did not answer all {phase.inputs} inputs within the "
            f"teacher phase's limit of {phase.limit_s:g} s"
        )


def _size(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n} bytes"


def _teacher_error(message: str) -> TailorError:
    return TailorError(502, message, code="teacher_failed")


def _answer_text(body: bytes) -> str:
    try:
        content = json.loads(body)["choices"][0]["message"].get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise _teacher_error("the teacher's reply is not an OpenAI chat completion") from None
    return content.strip() if isinstance(content, str) else ""


def _retry_after(r: httpx.Response) -> float | None:
    try:
        return max(0.0, float(r.headers.get("retry-after", "")))
    except ValueError:
        return None
