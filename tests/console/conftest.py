"""Fixtures of the console's tests: `world` (the seeded app under a TestClient, once per
module) and `sign_in` (a new logged-in TestClient on that app)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from tests.console.console_world import World, console_app, log_in, seed


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, TestClient]]:
    """The seeded app, started once per test module (starting it is the slow part)."""
    tmp = tmp_path_factory.mktemp("console")
    app = console_app(tmp)
    with TestClient(app) as client:
        yield seed(app, tmp), client


@pytest.fixture
def sign_in(world: tuple[World, TestClient]) -> Callable[[str], TestClient]:
    """A new client of the module's app, signed in with `key` (the lifespan runs only once)."""
    app = world[0].app

    def open_session(key: str) -> TestClient:
        client = TestClient(app)
        r = log_in(client, key)
        assert r.status_code == 200 and str(r.url).endswith("/console"), r.text
        return client

    return open_session


def pytest_configure(config: pytest.Config) -> None:
    # Also listed in pyproject.toml's markers; here too, so running this folder alone knows it.
    config.addinivalue_line("markers", "browser: drives a real headless chromium (skipped where it is not installed)")
