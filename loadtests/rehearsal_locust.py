"""Locust as the rehearsal's traffic source, run as a library in a process of its own.

    TAILOR_API_KEY=KEY python -m loadtests.rehearsal_locust --gateway URL --gateway URL \\
        --model BASE --model ADAPTER --records outcomes.jsonl

Headless users (--users) each send chat requests through one gateway (user i through gateway
i mod n), asking the models in turn with a pause between requests (--pause), until SIGTERM or
SIGINT; then each user finishes the request it is in and the process exits. Every request's
outcome (loadtests.rehearsal_traffic.Outcome: monotonic start and end, gateway, model, status,
interaction id, error kind) is one JSON line in --records, written from locust's request event.
loadtests.rehearsal_traffic.traffic starts and stops it.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import gevent
from locust import HttpUser, constant, task
from locust.env import Environment

from loadtests.rehearsal_traffic import (
    PAUSE_S,
    REQUEST_TIMEOUT_S,
    STOP_TIMEOUT_S,
    USERS,
    chat_body,
    outcome_of,
    write_outcome,
)


class GatewayClient(HttpUser):
    """One client of the tenant, on one gateway; `configure` says which gateways and models."""

    gateways: ClassVar[tuple[str, ...]] = ()
    models: ClassVar[tuple[str, ...]] = ()
    key: ClassVar[str] = ""
    numbers: ClassVar[Iterator[int]] = itertools.count()
    wait_time = constant(PAUSE_S)  # configure sets the pause asked for

    def on_start(self) -> None:
        self.gateway = next(self.numbers) % len(self.gateways)
        self.turns = itertools.cycle(self.models)

    @task
    def chat(self) -> None:
        model = next(self.turns)
        self.client.post(
            f"{self.gateways[self.gateway]}/v1/chat/completions",
            json=chat_body(model),
            headers={"Authorization": f"Bearer {self.key}"},
            name=f"chat via gateway {self.gateway + 1}",
            context={"gateway": self.gateway, "model": model},
            timeout=REQUEST_TIMEOUT_S,
        )


def configure(gateways: Sequence[str], models: Sequence[str], key: str, pause_s: float) -> type[GatewayClient]:
    GatewayClient.gateways, GatewayClient.models, GatewayClient.key = tuple(gateways), tuple(models), key
    GatewayClient.wait_time = constant(pause_s)
    return GatewayClient


def recorder(f: Any) -> Any:
    """A listener for locust's request event writing each request's outcome to `f`."""

    def record(response_time: float, context: dict[str, Any], response: Any = None, **_: Any) -> None:
        ended = time.monotonic()
        started = ended - response_time / 1000
        write_outcome(f, outcome_of(context["gateway"], context["model"], started, ended, response))

    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.rehearsal_locust", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway", action="append", required=True, help="a gateway's URL (repeat for each)")
    parser.add_argument("--model", action="append", required=True, help="a model to ask (repeat; asked in turn)")
    parser.add_argument("--users", type=int, default=USERS)
    parser.add_argument("--pause", type=float, default=PAUSE_S, help="seconds between a user's requests")
    parser.add_argument("--records", required=True, help="JSON lines, one per request")
    args = parser.parse_args(argv)
    user = configure(args.gateway, args.model, os.environ.get("TAILOR_API_KEY", ""), args.pause)
    # stop_timeout: stopping lets each user finish its request, so none is cut off mid-flight.
    env = Environment(user_classes=[user], host=args.gateway[0], stop_timeout=STOP_TIMEOUT_S)
    with open(args.records, "a", buffering=1, encoding="utf-8") as f:
        env.events.request.add_listener(recorder(f))
        runner = env.create_local_runner()
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, runner.quit)
        runner.start(args.users, spawn_rate=args.users)
        runner.greenlet.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
