"""Why a child engine stopped, read from the end of what it wrote to its log."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Enough for a Python traceback's last frames; a crashed engine can write megabytes before.
TAIL_BYTES = 8192
TAIL_LINES = 25

# Phrases in vLLM's (and Python's) last words, in the order they are looked for, and what
# they mean in words that name no paths.
_CAUSES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("Address already in use",), "its port was taken"),
    (("out of memory", "OutOfMemoryError", "Cannot allocate memory"), "it ran out of memory"),
    (
        (
            "config.json",
            "is not a local folder",
            "Repo id must be",
            "Invalid repository",
            "No such file or directory",
            "does not appear to have a file named",
        ),
        "it could not load the base model (check TAILOR_BASE_MODEL_PATH)",
    ),
    (("No module named",), "vLLM could not be imported"),
    (("error: argument", "unrecognized arguments"), "its arguments were refused"),
)


@dataclass(frozen=True)
class ExitReport:
    code: int
    # Short, no paths or secrets: fit for /ready.
    reason: str
    # The last lines of its log, for the server log.
    tail: str
    port_taken: bool


def read_tail(log_file: Path, since: int) -> str:
    """The last lines written to `log_file` after byte offset `since` (bounded)."""
    try:
        with log_file.open("rb") as f:
            end = f.seek(0, 2)
            f.seek(max(since, end - TAIL_BYTES))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-TAIL_LINES:])


def exit_report(code: int, tail: str) -> ExitReport:
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    cause = next((meaning for phrases, meaning in _CAUSES if any(p in tail for p in phrases)), None)
    reason = f"{how}: {cause}" if cause else how
    return ExitReport(code=code, reason=reason, tail=tail, port_taken=cause == _CAUSES[0][1])
