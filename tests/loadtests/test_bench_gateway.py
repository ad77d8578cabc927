"""Unit tests for the gateway benchmark's plumbing (`loadtests/bench_gateway/`): the direct target
sends the engine key. Covered: targets, client headers, the access check, --engine-key and `main`.

No vLLM, no gateway: engines are `httpx.MockTransport`, the benchmark itself is faked.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from loadtests.bench_gateway import cli as bench
from loadtests.bench_gateway import rounds
from loadtests.chat_client import Target, make_client

KEY = "engine-key-123"


# --- bench_gateway: the direct target carries the engine key ------------------------------------


def test_direct_target_sends_the_engine_key() -> None:
    targets = bench.make_targets("http://gw/", "http://engine:8100/", "sk-tenant", "m", engine_key=KEY)
    assert targets["direct"] == Target("direct", "http://engine:8100", "m", KEY)
    assert targets["gateway"] == Target("gateway", "http://gw", "m", "sk-tenant")
    cfg = bench.QUICK
    direct = make_client(targets["direct"], cfg.concurrency)
    gateway = make_client(targets["gateway"], cfg.concurrency)
    assert direct.headers["authorization"] == f"Bearer {KEY}"
    assert gateway.headers["authorization"] == "Bearer sk-tenant"


def test_direct_target_without_a_key_sends_none() -> None:
    targets = bench.make_targets("http://gw", "http://engine", "sk-tenant", "m")
    client = make_client(targets["direct"], bench.QUICK.concurrency)
    assert "authorization" not in client.headers


def test_round_requests_carry_the_key() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"usage": {"completion_tokens": 16}})

    target = Target("direct", "http://engine", "m", KEY)
    cfg = bench.BenchConfig(concurrency=2, max_tokens=16, rounds=1, requests_per_round=3, stream=False)

    async def go() -> rounds.RoundResult:
        async with httpx.AsyncClient(
            base_url=target.base_url,
            headers=make_client(target, cfg.concurrency).headers,
            transport=httpx.MockTransport(handler),
        ) as client:
            return await rounds.run_round(client, target, cfg, slot=1)

    result = asyncio.run(go())
    assert all(r.ok for r in result.requests)
    assert seen == [f"Bearer {KEY}"] * 3


def models_engine(status: int = 200, models: tuple[str, ...] = ("m",)) -> tuple[httpx.MockTransport, list[Any]]:
    seen: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("authorization")))
        if status != 200:
            return httpx.Response(status, json={"error": "Unauthorized"})
        return httpx.Response(200, json={"data": [{"id": m} for m in models]})

    return httpx.MockTransport(handler), seen


def test_check_access_passes_with_the_key() -> None:
    transport, seen = models_engine()
    bench.check_access(Target("direct", "http://engine", "m", KEY), transport)
    assert seen == [("/v1/models", f"Bearer {KEY}")]


def test_check_access_names_the_missing_engine_key() -> None:
    transport, _ = models_engine(401)
    with pytest.raises(RuntimeError, match=r"direct at http://engine refused no key: HTTP 401 \(--engine-key\)"):
        bench.check_access(Target("direct", "http://engine", "m"), transport)
    with pytest.raises(RuntimeError, match=r"refused a wrong key: HTTP 401 \(--api-key\)"):
        bench.check_access(Target("gateway", "http://gw", "m", "sk-bad"), transport)


def test_check_access_wants_the_model_served() -> None:
    transport, _ = models_engine(models=("other",))
    with pytest.raises(RuntimeError, match="does not serve 'm'"):
        bench.check_access(Target("direct", "http://engine", "m", KEY), transport)
    transport, _ = models_engine(500)
    with pytest.raises(RuntimeError, match="HTTP 500"):
        bench.check_access(Target("direct", "http://engine", "m", KEY), transport)


def test_engine_version_sends_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    def fake_get(url: str, *, headers: dict[str, str], timeout: float) -> httpx.Response:
        seen.append((url, headers))
        return httpx.Response(200, json={"version": "0.32.0"})

    monkeypatch.setattr(bench.httpx, "get", fake_get)
    assert bench.engine_version(Target("direct", "http://engine", "m", KEY)) == "0.32.0"
    assert seen == [("http://engine/version", {"authorization": f"Bearer {KEY}"})]


# --- bench_gateway: command line and main ------------------------------------------------------


def test_engine_key_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TAILOR_ENGINE_API_KEY", raising=False)
    hand = ["--gateway-url", "http://gw", "--engine-url", "http://e", "--api-key", "sk-t"]
    assert bench.parse_args(hand).engine_key is None
    assert bench.parse_args([*hand, "--engine-key", KEY]).engine_key == KEY
    monkeypatch.setenv("TAILOR_ENGINE_API_KEY", "from-env")
    assert bench.parse_args(hand).engine_key == "from-env"
    assert bench.parse_args([*hand, "--engine-key", KEY]).engine_key == KEY


def capture_benchmark(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []

    def fake(*args: Any) -> bench.Report:
        calls.append(args)
        raise RuntimeError("stop here")

    monkeypatch.setattr(bench, "benchmark", fake)
    monkeypatch.setattr(signal, "signal", lambda *_a: None)
    return calls


def test_main_by_hand_passes_the_engine_key(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = capture_benchmark(monkeypatch)
    argv = ["--gateway-url", "http://gw", "--engine-url", "http://e", "--api-key", "sk-t", "--engine-key", KEY]
    assert bench.main([*argv, "--quick"]) == 1
    ((cfg, gateway_url, engine_url, api_key, model, vllm_before, engine_key),) = calls
    assert (gateway_url, engine_url, api_key, vllm_before, engine_key) == ("http://gw", "http://e", "sk-t", None, KEY)
    assert cfg == bench.QUICK


def test_main_starts_an_operator_engine_and_uses_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = capture_benchmark(monkeypatch)
    opened: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def fake_local_tailor(model_dir: Path, **kwargs: Any) -> Iterator[Any]:
        opened.append(kwargs)
        yield SimpleNamespace(url="http://gw", engine_url="http://e", engine_key=KEY)

    monkeypatch.setattr(bench, "local_tailor", fake_local_tailor)
    monkeypatch.setattr(bench, "create_tenant_key", lambda server: "sk-tenant")
    monkeypatch.setattr(bench, "count_vllm_processes", lambda: 0)
    assert bench.main(["--quick"]) == 1
    assert opened == [{"env_extra": {"TAILOR_RUN_TRAINER": "false"}, "engine": "operator"}]
    ((_cfg, gateway_url, engine_url, api_key, _model, vllm_before, engine_key),) = calls
    assert (gateway_url, engine_url, api_key, vllm_before, engine_key) == ("http://gw", "http://e", "sk-tenant", 0, KEY)


def test_benchmark_checks_both_targets_before_the_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[Target] = []
    monkeypatch.setattr(bench, "check_access", lambda t: checked.append(t))

    async def no_rounds(targets: dict[str, Target], cfg: bench.BenchConfig) -> list[rounds.RoundResult]:
        assert [t.name for t in checked] == ["direct", "gateway"]
        assert targets["direct"].api_key == KEY
        return []

    monkeypatch.setattr(bench, "run_interleaved", no_rounds)
    monkeypatch.setattr(bench, "engine_version", lambda target: "v")
    report = bench.benchmark(bench.QUICK, "http://gw", "http://e", "sk-t", "m", 0, KEY)
    assert report.machine.engine_version == "v"
    assert checked[0] == Target("direct", "http://e", "m", KEY)


def test_main_reports_a_refused_engine_key(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(signal, "signal", lambda *_a: None)
    transport, _ = models_engine(401)
    real = bench.check_access
    monkeypatch.setattr(bench, "check_access", lambda t: real(t, transport))
    argv = ["--gateway-url", "http://gw", "--engine-url", "http://e", "--api-key", "sk-t", "--quick"]
    monkeypatch.delenv("TAILOR_ENGINE_API_KEY", raising=False)
    assert bench.main(argv) == 1
    assert "direct at http://e refused no key: HTTP 401 (--engine-key)" in capsys.readouterr().err
