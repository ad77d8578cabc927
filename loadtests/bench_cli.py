"""The command-line frame the gateway benchmarks share: their parser's start, the settings the
options override, SIGTERM, exit codes and the printed (and JSON) report."""

from __future__ import annotations

import argparse
import json
import signal
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from loadtests.launcher import progress

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T")
Config = TypeVar("Config", bound="DataclassInstance")


def doc_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of `doc` (the module's docstring)."""
    return argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0] if doc else None)


def bench_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """`doc_parser` with --gateway-url (a running Tailor)."""
    p = doc_parser(prog, doc)
    p.add_argument("--gateway-url", help="A running Tailor; default: start one here.")
    return p


def options_over(base: Config, args: argparse.Namespace) -> Config:
    """`base` (a dataclass) with each field the command line gave: an option of the field's
    name that is not None (options without a default stay None, so `base` keeps its value)."""
    given = {f.name: getattr(args, f.name, None) for f in fields(base)}
    return replace(base, **{name: value for name, value in given.items() if value is not None})


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


def run_and_report(
    measure: Callable[[], T],
    render: Callable[[T], str],
    json_path: Path | None,
    on_sigterm: Callable[[int, Any], None] = exit_on_sigterm,
) -> int:
    """A benchmark's `main` after its arguments: measure, print the report and, when asked,
    write it whole as JSON; the exit code of `attempt`."""
    signal.signal(signal.SIGTERM, on_sigterm)
    report, rc = attempt(measure)
    if report is None:
        return rc
    print(render(report), flush=True)
    if json_path:
        write_json(report, json_path)
    return 0


def write_json(report: Any, path: Path) -> None:
    path.write_text(json.dumps(asdict(report), indent=2))
