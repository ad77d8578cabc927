"""/ready says which engines take no traffic and why, without paths or secrets.

Two operator-run engines that are not what Tailor was told to use run as real local
servers: one requires another key, one serves another model. Neither is ever used.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from adapters.engines import bearer
from adapters.ports import pick_free_port
from core.errors import TailorError
from tests.adapters import fake_vllm_server
from tests.apputil import make_app

BASE = "SmolLM2-135M-Instruct"


def test_ready_names_engines_that_are_not_tailors(tmp_path: Path) -> None:
    with (
        fake_vllm_server.running(pick_free_port("127.0.0.1"), BASE, api_key="their-key") as keyed,
        fake_vllm_server.running(pick_free_port("127.0.0.1"), "llama-3") as other_model,
    ):
        app = make_app(
            tmp_path,
            engine_urls=[keyed, other_model],
            engine_api_key="our-engine-key",
            base_model_name=BASE,
            engine_health_interval_s=0.05,
            run_trainer=False,
        )
        with TestClient(app) as client:
            deadline = time.monotonic() + 20
            while True:
                r = client.get("/ready")
                status = r.json()["engine_status"]
                if all(e["problem"] for e in status) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert r.status_code == 503, r.text
            body = r.json()
            assert body["status"] == "unavailable" and body["healthy_engines"] == 0 and body["engines"] == 2
            assert [e["url"] for e in status] == [keyed, other_model]
            assert not any(e["healthy"] for e in status)
            assert status[0]["problem"].startswith(f"engine {keyed} refused Tailor's key")
            assert (
                status[1]["problem"] == f"engine {other_model} serves 'llama-3' but TAILOR_BASE_MODEL_NAME is '{BASE}'"
            )
            assert "our-engine-key" not in r.text and "their-key" not in r.text
            # Never picked: requests get a clean 503, not someone else's answer.
            with pytest.raises(TailorError) as err:
                app.state.services.pool.pick(None)
            assert err.value.status == 503


def test_engines_are_wired_from_settings(tmp_path: Path) -> None:
    attached = make_app(tmp_path / "a", engine_urls=["http://gpu1:8000/"], engine_api_key="k1").state.services
    assert [(e.url, e.headers) for e in attached.pool.engines] == [("http://gpu1:8000", bearer("k1"))]
    assert attached.supervisors == [] and attached.pool.expect.probe_adapter is not None
    keyless = make_app(tmp_path / "b", engine_urls=["http://gpu1:8000"]).state.services
    assert keyless.pool.engines[0].headers == {}
    child = make_app(tmp_path / "c", engine_urls=[]).state.services
    [supervisor] = child.supervisors
    engine = child.pool.engines[0]
    assert supervisor.engine is engine and supervisor.launch.port == 0  # the default: any free port
    assert engine.headers["Authorization"].startswith("Bearer ") and engine.owner_check is not None


def test_ready_never_shows_credentials_in_engine_urls() -> None:
    from adapters.engines import Engine
    from gateway.routes.health import _engine_status

    url = "http://proxy-user:s3cret@engines.internal:8000"
    engine = Engine(url=url, problem=f"engine {url} is not answering")
    shown = _engine_status(engine)
    assert shown["url"] == "http://engines.internal:8000"
    assert shown["problem"] == "engine http://engines.internal:8000 is not answering"
    assert "s3cret" not in repr(shown)
