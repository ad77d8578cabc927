"""A database that goes away while an audited action commits: for the tests that each
action's change and its audit event are committed together or not at all."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import pytest


@contextmanager
def failing_after_recording(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> Iterator[list[str]]:
    """Make `module.record` (core.audit's, or a re-export of it) put its event in the session
    and then fail, as a commit would; yields the actions it was asked to record.

    The block must raise that failure; on leaving it, `record` is real again.
    """
    written: list[str] = []
    real: Callable[..., None] = module.record

    def record_then_fail(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)  # the event is in the session ...
        written.append(kwargs["action"])
        raise RuntimeError("the database went away")  # ... and the transaction fails

    with monkeypatch.context() as patched:
        patched.setattr(module, "record", record_then_fail)
        with pytest.raises(RuntimeError, match="went away"):
            yield written
