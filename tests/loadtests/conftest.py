"""Fixtures of the load-test tests: the locustfile loaded without locust, and its fake clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.loadtests.locust_fakes import FakeClock, Locustfile, load_locustfile


@pytest.fixture
def lf() -> Iterator[Locustfile]:
    """A fresh copy of the locustfile (see tests.loadtests.locust_fakes)."""
    with load_locustfile() as locustfile:
        yield locustfile


@pytest.fixture
def clock(lf: Locustfile, monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(lf.module, "time", fake)
    return fake
