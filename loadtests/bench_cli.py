"""The command-line frame the gateway benchmarks share: their parser's start, SIGTERM, exit codes."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from loadtests.launcher import progress

T = TypeVar("T")


def bench_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of `doc`, with --gateway-url (a running Tailor)."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0] if doc else None)
    p.add_argument("--gateway-url", help="A running Tailor; default: start one here.")
    return p


def exit_on_sigterm(_signum: int, _frame: object) -> None:
    # Turn SIGTERM into an exception so the `finally` that stops our Tailor still runs.
    raise SystemExit(143)


def attempt(measure: Callable[[], T]) -> tuple[T | None, int]:
    """`measure()` and exit code 0; on Ctrl-C (130) or a RuntimeError (1) no result, said on stderr."""
    try:
        return measure(), 0
    except KeyboardInterrupt:
        progress("interrupted")
        return None, 130
    except RuntimeError as exc:
        progress(f"benchmark failed: {exc}")
        return None, 1
