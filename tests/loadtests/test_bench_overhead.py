"""The gateway-overhead benchmark end to end, briefly: a real `tailor serve` in front of the mock engine.

No vLLM: loadtests.mock_engine answers at once, so this runs in seconds. What it checks is
that the figures come from real traffic (requests counted on both paths, none failed) and
that the mock speaks enough of vLLM's API for the gateway to accept it as an operator-run
engine (its health, key and LoRA-probe checks) and return schema-valid answers through it.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from loadtests import bench_overhead
from loadtests.admin_api import create_tenant_key
from loadtests.launcher import MODEL_DIR
from loadtests.local_server import local_tailor
from tests.openai_schema import validate


def test_env_flags_take_only_tailor_settings() -> None:
    assert bench_overhead.parse_env(["TAILOR_LOG_LEVEL=debug"]) == {"TAILOR_LOG_LEVEL": "debug"}
    with pytest.raises(SystemExit):
        bench_overhead.parse_env(["PATH=/tmp"])


def test_the_gateway_takes_the_mock_engine_and_answers_schema_valid() -> None:
    with local_tailor(MODEL_DIR, engine="mock") as server:
        key = create_tenant_key(server, "bench")
        headers = {"Authorization": f"Bearer {key}"}
        body = {"model": MODEL_DIR.name, "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        validate(r.json(), "CreateChatCompletionResponse")
        with httpx.stream(
            "POST", f"{server.url}/v1/chat/completions", json={**body, "stream": True}, headers=headers, timeout=30
        ) as s:
            chunks = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
        assert chunks and "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        for chunk in chunks:
            validate(chunk, "CreateChatCompletionStreamResponse")
        wrong = httpx.get(f"{server.engine_url}/v1/models", headers={"Authorization": "Bearer nope"}, timeout=5)
        assert wrong.status_code == 401


def test_a_short_run_measures_both_paths(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    bench_overhead.main(["--clients", "1,2", "--seconds", "1", "--json", str(out)])
    levels = json.loads(out.read_text())
    assert [lv["clients"] for lv in levels] == [1, 2]
    for lv in levels:
        assert lv["direct_rps"] > 0 and lv["tailor_rps"] > 0
        assert lv["tailor_failures"] == 0
        assert lv["added_p50_ms"] == pytest.approx(lv["tailor_p50_ms"] - lv["direct_p50_ms"])


def _level(clients: int, rps: float) -> bench_overhead.Level:
    return bench_overhead.Level(clients, 1000.0, 1.0, rps, 2.0, 5.0, 0, 0.1, 0.5, 0.1)


def test_workers_are_compared_at_their_own_saturation() -> None:
    one = [_level(2, 100.0), _level(8, 120.0), _level(20, 110.0)]
    two = [_level(2, 110.0), _level(8, 180.0), _level(20, 200.0)]
    lines = bench_overhead.compare_workers({1: one, 2: two})
    assert lines[0] == "1 worker(s): saturates at 120 req/s (8 clients)"
    assert lines[1] == "2 worker(s): saturates at 200 req/s (20 clients)"
    assert lines[2] == "2 workers / 1 worker at saturation: 1.67 (goal >= 1.6) PASS"


def test_litellm_gets_the_same_engine_and_a_master_key(tmp_path: Path) -> None:
    from loadtests.litellm_proxy import litellm_proxy, proxy_config

    config = proxy_config("http://127.0.0.1:9", "engine-key", "m", "sk-master")
    [entry] = config["model_list"]  # type: ignore[misc]
    assert entry == {
        "model_name": "m",
        "litellm_params": {"model": "openai/m", "api_base": "http://127.0.0.1:9/v1", "api_key": "engine-key"},
    }
    assert config["general_settings"] == {"master_key": "sk-master"}
    # Not installed beside Tailor: a clear exit, not a traceback.
    with pytest.raises(SystemExit, match="no LiteLLM executable"), litellm_proxy(tmp_path / "litellm", "u", "k", "m"):
        pass
