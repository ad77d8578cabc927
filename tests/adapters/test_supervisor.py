"""The child engine is Tailor's own: free port, random key, and it says why when it cannot start.

The supervisor runs real child processes here: `fake_vllm_server.py` stands in for vLLM's
OpenAI server (same arguments, same key handling, same bind), so the tests need no model.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import psutil
import pytest

from adapters.engine_checks import EngineExpectation
from adapters.engine_exit import exit_report, read_tail
from adapters.engines import EnginePool
from adapters.ports import pick_free_port, port_is_free, tree_listens_on
from adapters.supervisor import EngineLaunch, EnginePortTaken, EngineSupervisor, child_engine
from tests.adapters import fake_vllm_server
from tests.ports import listening_port

BASE = "SmolLM2-135M-Instruct"
FAKE_SERVER = Path(fake_vllm_server.__file__)


@dataclass(frozen=True)
class FakeLaunch(EngineLaunch):
    def command(self) -> list[str]:
        return [
            sys.executable,
            str(FAKE_SERVER),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--served-model-name",
            self.served_name,
        ]


def fake_launch(tmp_path: Path, port: int = 0) -> FakeLaunch:
    return FakeLaunch(
        model_path=tmp_path / "model",
        served_name=BASE,
        port=port,
        max_lora_rank=16,
        max_loras=1,
        max_cpu_loras=1,
        max_model_len=128,
        dtype="bfloat16",
        kv_cache_gib=1,
        log_file=tmp_path / "logs" / "engine.log",
    )


@dataclass
class Child:
    supervisor: EngineSupervisor
    pool: EnginePool

    @property
    def engine(self):  # type: ignore[no-untyped-def]
        return self.pool.engines[0]

    async def wait_for(self, what: str, condition, timeout_s: float = 30) -> None:  # type: ignore[no-untyped-def]
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not condition():
            assert asyncio.get_running_loop().time() < deadline, f"{what}; engine: {self.engine}"
            await self.pool.check(self.engine)
            await asyncio.sleep(0.1)


@asynccontextmanager
async def supervised(launch: EngineLaunch) -> AsyncIterator[Child]:
    async with httpx.AsyncClient() as client:
        pool = EnginePool(
            [child_engine(launch)], client, expect=EngineExpectation(served_name=BASE, max_lora_rank=16), max_resident=2
        )
        supervisor = EngineSupervisor(launch, pool, pool.engines[0], max_backoff_s=0.5)
        try:
            yield Child(supervisor, pool)
        finally:
            await supervisor.stop(timeout_s=5)


@pytest.fixture
def taken_port() -> Iterator[int]:
    with listening_port() as port:
        yield port


# --- ports ---------------------------------------------------------------------------


def test_free_port_pick_and_check(taken_port: int) -> None:
    port = pick_free_port("127.0.0.1")
    assert port > 0 and port_is_free("127.0.0.1", port)
    assert not port_is_free("127.0.0.1", taken_port)
    assert not tree_listens_on(psutil.Process().pid, port)


# --- the child engine ----------------------------------------------------------------


async def test_child_engine_gets_a_free_port_and_a_key_nobody_else_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VLLM_FAKE_MODE", raising=False)
    monkeypatch.setenv("VLLM_API_KEY", "the operator's own key")  # must not leak into the child
    async with supervised(fake_launch(tmp_path / "a")) as one, supervised(fake_launch(tmp_path / "b")) as two:
        await one.supervisor.start()
        await two.supervisor.start()
        for child in (one, two):
            await child.wait_for("healthy", lambda c=child: c.engine.healthy)
        # Two gateways on one host: two engines, two ports, two keys.
        assert one.supervisor.port != two.supervisor.port and 0 not in (one.supervisor.port, two.supervisor.port)
        assert one.engine.url == f"http://127.0.0.1:{one.supervisor.port}"
        assert one.engine.headers != two.engine.headers
        async with httpx.AsyncClient() as http:
            models = f"{one.engine.url}/v1/models"
            assert (await http.get(models)).status_code == 401
            assert (await http.get(models, headers=two.engine.headers)).status_code == 401
            assert (
                await http.get(models, headers={"Authorization": "Bearer the operator's own key"})
            ).status_code == 401
            assert (await http.get(models, headers=one.engine.headers)).status_code == 200
        # The key is not on the command line, where `ps` would show it, nor in the engine's log.
        key = one.engine.headers["Authorization"].removeprefix("Bearer ")
        assert len(key) >= 32
        assert key not in " ".join(psutil.Process(one.supervisor.process.pid).cmdline())  # type: ignore[union-attr]
        assert key not in (tmp_path / "a" / "logs" / "engine.log").read_text()


async def test_configured_port_in_use_is_a_clear_error(tmp_path: Path, taken_port: int) -> None:
    async with supervised(fake_launch(tmp_path, port=taken_port)) as child:
        with pytest.raises(EnginePortTaken) as err:
            await child.supervisor.start()
        assert str(err.value) == (
            f"engine port {taken_port} on 127.0.0.1 is in use by another process (TAILOR_ENGINE_PORT): free it, "
            "or set TAILOR_ENGINE_PORT=0 to use any free port"
        )
        assert child.supervisor.process is None


async def test_configured_free_port_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_FAKE_MODE", raising=False)
    port = pick_free_port("127.0.0.1")
    async with supervised(fake_launch(tmp_path, port=port)) as child:
        await child.supervisor.start()
        await child.wait_for("healthy", lambda: child.engine.healthy)
        assert child.engine.url == f"http://127.0.0.1:{port}"


async def test_child_that_cannot_start_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("VLLM_FAKE_MODE", "crash")
    async with supervised(fake_launch(tmp_path)) as child:
        with caplog.at_level(logging.ERROR, logger="tailor.supervisor"):
            await child.supervisor.start()
            await child.wait_for("a reason", lambda: child.supervisor.restarts >= 1)
        problem = child.engine.problem or ""
        assert problem.startswith("child engine exited with code 1: it could not load the base model"), problem
        assert "/models/missing" not in problem  # /ready is unauthenticated: no paths
        assert not child.engine.healthy
        # The server log has the engine's own last words.
        assert "does not appear to have a file named config.json" in caplog.text


async def test_lost_race_for_the_free_port_picks_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("VLLM_FAKE_MODE", "port-taken-once")
    monkeypatch.setenv("VLLM_FAKE_MARKER", str(tmp_path / "tried"))
    async with supervised(fake_launch(tmp_path)) as child:
        with caplog.at_level(logging.ERROR, logger="tailor.supervisor"):
            await child.supervisor.start()
            await child.wait_for("healthy after the retry", lambda: child.engine.healthy)
        assert child.supervisor.restarts == 1
        assert child.supervisor.failure == "exited with code 1: its port was taken"
        assert "Address already in use" in caplog.text


async def test_stranger_on_the_childs_port_is_never_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our child is alive but has not bound its port yet; a stranger without a key, serving a
    model of the same name, answers there. Tailor must not take it for its engine."""
    monkeypatch.setenv("VLLM_FAKE_MODE", "no-bind")
    async with supervised(fake_launch(tmp_path)) as child:
        await child.supervisor.start()
        with fake_vllm_server.running(child.supervisor.port, BASE) as stranger:
            assert stranger == child.engine.url
            for _ in range(5):
                assert await child.pool.check(child.engine) is False
            assert child.engine.problem == "child engine is starting"
            assert not child.engine.healthy


# --- exit reasons ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "tail", "reason"),
    [
        (1, "OSError: [Errno 98] Address already in use", "exited with code 1: its port was taken"),
        (1, "torch.OutOfMemoryError: CUDA out of memory.", "exited with code 1: it ran out of memory"),
        (1, "ModuleNotFoundError: No module named 'vllm'", "exited with code 1: vLLM could not be imported"),
        (2, "api_server.py: error: argument --dtype: invalid choice", "exited with code 2: its arguments were refused"),
        (1, "RuntimeError: something else", "exited with code 1"),
        (-9, "", "was killed by signal 9"),
    ],
)
def test_exit_reasons(code: int, tail: str, reason: str) -> None:
    report = exit_report(code, tail)
    assert report.reason == reason
    assert report.port_taken == ("Address already in use" in tail)


def test_read_tail_is_bounded_and_reads_only_this_run(tmp_path: Path) -> None:
    log_file = tmp_path / "engine.log"
    log_file.write_text("previous run: Address already in use\n")
    since = log_file.stat().st_size
    with log_file.open("a") as f:
        f.writelines(f"line {i}\n" for i in range(10_000))
    tail = read_tail(log_file, since)
    assert "previous run" not in tail
    assert tail.splitlines()[-1] == "line 9999" and len(tail.splitlines()) == 25
    assert read_tail(tmp_path / "missing.log", 0) == ""


def test_child_engine_environment_holds_no_operator_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_ADMIN_KEY", "adm-secret")
    monkeypatch.setenv("TAILOR_DATABASE_URL", "postgresql://u:pw@db/tailor")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("HF_HOME", "/models/hf")
    env = fake_launch(tmp_path).env("engine-key")
    assert env["VLLM_API_KEY"] == "engine-key" and env["HF_HOME"] == "/models/hf" and "PATH" in env
    leaked = {k for k, v in env.items() if "secret" in v or "pw@" in v}
    assert not leaked and "TAILOR_ADMIN_KEY" not in env


def test_what_a_killed_child_engine_printed_is_in_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM logs to stdout; a file there is block-buffered unless the child's environment says
    otherwise, and a kill would lose what the exit report and operators read."""
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)  # not the gateway's own setting
    log = tmp_path / "engine.log"
    script = "import time; print('Loaded new LoRA adapter: name x'); time.sleep(60)"
    with log.open("ab") as out:
        child = subprocess.Popen([sys.executable, "-c", script], stdout=out, env=fake_launch(tmp_path).env("k"))
    try:
        deadline = time.monotonic() + 20
        while b"Loaded new LoRA adapter" not in log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
    assert "Loaded new LoRA adapter: name x" in log.read_text()


def test_child_engine_schedules_by_priority_unless_the_operator_says_otherwise(tmp_path: Path) -> None:
    launch = replace(fake_launch(tmp_path), extra_args=["--max-num-seqs", "64"])
    command = EngineLaunch.command(launch)
    policy = command.index("--scheduling-policy")
    assert command[policy + 1] == "priority"  # batch requests (priority 10) after interactive ones (0)
    # Operator arguments come last, so TAILOR_ENGINE_EXTRA_ARGS can still choose another policy.
    assert command[-2:] == ["--max-num-seqs", "64"] and policy < len(command) - 2
