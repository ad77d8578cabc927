"""The rehearsal's traffic: locust (loadtests.rehearsal_locust, in a process of its own) sending
chat requests through every gateway while a fault is injected, and one request's outcome.

Locust runs in its own process because it monkey-patches the standard library with gevent on
import; the rehearsal's own threads, subprocesses and object-store server stay unpatched. Both
processes stamp requests with `time.monotonic()`, one clock for every process on the machine, so
a request's start and end compare with the moment a fault was injected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from loadtests.launcher import ROOT, log_tail

# Users sending through the gateways together (user i through gateway i mod n), each pausing
# between requests: steady traffic, not a saturation test, so the faults are what the figures show.
USERS = 4
PAUSE_S = 0.02
REQUEST_TIMEOUT_S = 30.0
# The locust process's start (its imports) and stop (users finishing the request they are in).
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = REQUEST_TIMEOUT_S + 15


@dataclass(frozen=True)
class Outcome:
    gateway: int
    model: str
    started: float  # time.monotonic()
    ended: float
    status: int  # 0: no HTTP answer (connection refused or reset, timeout)
    interaction_id: str | None
    error_type: str | None


class Answer(Protocol):
    """What httpx's and requests' responses share, as far as an outcome reads them."""

    status_code: int

    @property
    def headers(self) -> Any: ...

    def json(self) -> Any: ...


def chat_body(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Where is my order?"}], "max_tokens": 8}


def outcome_of(gateway: int, model: str, started: float, ended: float, answer: Answer | None) -> Outcome:
    """A request's outcome from its answer (None: no HTTP answer came back)."""
    if answer is None or not answer.status_code:
        return Outcome(gateway, model, started, ended, 0, None, "transport")
    error = None if answer.status_code == 200 else error_kind(answer)
    interaction = answer.headers.get("x-tailor-interaction-id")
    return Outcome(gateway, model, started, ended, answer.status_code, interaction, error)


def error_kind(answer: Answer) -> str:
    """The OpenAI error body's `type` and `code` ("type/code: message"), or "not_openai_shaped"."""
    try:
        data = answer.json()
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or not error.get("type"):
        return "not_openai_shaped"
    return f"{error['type']}/{error.get('code')}: {str(error.get('message'))[:80]}"


def ask(http: httpx.Client, url: str, key: str, gateway: int, model: str) -> Outcome:
    """One chat request through the gateway at `url` (number `gateway`), and how it went."""
    started = time.monotonic()
    try:
        r = http.post(f"{url}/v1/chat/completions", json=chat_body(model), headers={"Authorization": f"Bearer {key}"})
    except httpx.HTTPError:
        return outcome_of(gateway, model, started, time.monotonic(), None)
    return outcome_of(gateway, model, started, time.monotonic(), r)


def read_outcomes(path: Path) -> list[Outcome]:
    """The JSON lines the locust process wrote (a line cut off by a kill is left out)."""
    outcomes = []
    with contextlib.suppress(FileNotFoundError), path.open(encoding="utf-8") as f:
        for line in f:
            with contextlib.suppress(ValueError, TypeError):
                outcomes.append(Outcome(**json.loads(line)))
    return outcomes


def write_outcome(f: Any, outcome: Outcome) -> None:
    f.write(json.dumps(dataclasses.asdict(outcome)) + "\n")


def _wait_first(path: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (path.exists() and path.stat().st_size):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"locust sent no request (exit {proc.poll()}):\n{log_tail(log, 30)}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def traffic(
    gateways: Sequence[str], key: str, models: Sequence[str], work: Path, *, pause_s: float = PAUSE_S
) -> Iterator[list[Outcome]]:
    """Locust users sending chat requests (the `models` in turn, `pause_s` apart) through the
    `gateways` from the moment the first has been answered until the block ends; the list yielded
    holds every request's outcome once the block has ended (requests in flight then are finished
    first)."""
    work.mkdir(parents=True, exist_ok=True)
    records = work / f"traffic-{time.monotonic_ns()}.jsonl"
    log = records.with_suffix(".log")
    command = [sys.executable, "-m", "loadtests.rehearsal_locust", "--records", str(records), "--users", str(USERS)]
    command += ["--pause", str(pause_s)]
    command += [arg for url in gateways for arg in ("--gateway", url)]
    command += [arg for model in models for arg in ("--model", model)]
    outcomes: list[Outcome] = []
    with log.open("wb") as out:
        # The key through the environment: a command line is readable by every user of the machine.
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, "TAILOR_API_KEY": key},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait_first(records, proc, log)
        yield outcomes
    finally:
        _stop(proc)
        outcomes.extend(read_outcomes(records))
