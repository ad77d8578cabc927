"""A real vLLM engine that fetches its adapters from Tailor over HTTP (TAILOR_ENGINE_ADAPTER_SOURCE=url).

The child engine gets no path: asked for the adapter, vLLM calls Tailor's resolver plugin,
which downloads the version from the gateway into the engine's own cache, checks it and loads
it. The taught answer proves the right weights arrived.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import LiveEngine
from tests.integration.conftest import make_tenant, running_tailor
from tests.integration.test_adapters_live import ask, register_path

pytestmark = pytest.mark.engine


def test_an_engine_serves_an_adapter_it_fetched_by_url(
    tmp_path_factory: pytest.TempPathFactory, eval_engine: LiveEngine, trained_adapter: Path
) -> None:
    with running_tailor(
        tmp_path_factory.mktemp("url-source"), eval_engine, TAILOR_ENGINE_ADAPTER_SOURCE="url"
    ) as server:
        tenant = make_tenant(server, "fetcher")
        register_path(server, tenant.name, "support", trained_adapter)
        assert "Zorblax" in ask(server.sdk(tenant), "support")
        # Only the resolver writes there: the gateway's own store is a local folder it never copies.
        [fetched] = (server.data_dir / "cache" / "adapters").iterdir()
        assert (fetched / "MANIFEST.json").is_file() and (fetched / "adapter_config.json").is_file()
