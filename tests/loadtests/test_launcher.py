"""Unit tests for the throwaway Tailor the benchmarks start: `loadtests/launcher.py` and
`loadtests/local_server.py`.

No vLLM, no gateway: processes are faked (or are `sleep`), engines are `httpx.MockTransport`.
Covered: the environment `tailor serve` gets with a child engine and with an operator-run one
(URL and key), the engine launch built from Settings (the same as the gateway's own child
launch), starting and stopping that engine, and the order `local_tailor` starts and stops things
in (the engine after the gateway, also on failure).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest

from adapters.supervisor import EngineLaunch
from gateway.services import Services
from loadtests import launcher, local_server
from loadtests.launcher import LocalEngine

KEY = "engine-key-123"


def fake_engine(tmp_path: Path, url: str = "http://127.0.0.1:9999") -> LocalEngine:
    return LocalEngine(url=url, key=KEY, log_path=tmp_path / "engine.log", process=cast(Any, None))


def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text("{}")
    return d


# --- the gateway's environment ---------------------------------------------------------------


def test_gateway_env_child_engine_on_any_free_port(tmp_path: Path) -> None:
    env = launcher.gateway_env(
        tmp_path, 8123, "adm-x", tmp_path / "m", env_extra={"TAILOR_RUN_TRAINER": "false"}, base={"PATH": "/bin"}
    )
    assert env == {
        "PATH": "/bin",
        "TAILOR_DATA_DIR": str(tmp_path),
        "TAILOR_PORT": "8123",
        "TAILOR_ENGINE_PORT": "0",
        "TAILOR_ADMIN_KEY": "adm-x",
        "TAILOR_BASE_MODEL_PATH": str(tmp_path / "m"),
        "TAILOR_WORKERS": "1",
        "TAILOR_RUN_TRAINER": "false",
    }


def test_gateway_env_operator_engine_gets_url_and_key(tmp_path: Path) -> None:
    extra = {"TAILOR_ENGINE_URLS": "http://elsewhere:1", "TAILOR_ENGINE_PORT": "8100"}
    env = launcher.gateway_env(
        tmp_path, 8123, "adm-x", tmp_path / "m", env_extra=extra, engine=fake_engine(tmp_path), base={}
    )
    assert env["TAILOR_ENGINE_URLS"] == "http://127.0.0.1:9999"
    assert env["TAILOR_ENGINE_API_KEY"] == KEY
    assert "TAILOR_ENGINE_PORT" not in env  # no child engine at all


def test_gateway_env_defaults_to_this_process_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOMETHING_ELSE", "kept")
    env = launcher.gateway_env(tmp_path, 1, "a", tmp_path)
    assert env["SOMETHING_ELSE"] == "kept"


# --- the engine launch ----------------------------------------------------------------------


def operator_settings(tmp_path: Path, **extra: str) -> Any:
    env = launcher.gateway_env(tmp_path / "data", 1, "adm", model_dir(tmp_path), env_extra=extra)
    return launcher.settings_from(env)


def test_settings_from_reads_the_given_environment_only(tmp_path: Path) -> None:
    before = dict(os.environ)
    s = operator_settings(tmp_path, TAILOR_ENGINE_MAX_LORA_RANK="32", TAILOR_ENGINE_EXTRA_ARGS="--seed,7")
    assert s.data_dir == tmp_path / "data"
    assert s.base_model_path == tmp_path / "model"
    assert s.engine_max_lora_rank == 32
    assert s.engine_extra_args == ["--seed", "7"]
    assert dict(os.environ) == before


def test_engine_launch_is_the_gateways_child_launch(tmp_path: Path) -> None:
    s = operator_settings(tmp_path, TAILOR_MAX_RESIDENT_ADAPTERS="11")
    ours = launcher.engine_launch(s, port=8100)
    s_child = s.model_copy(update={"engine_port": 8100})
    # The gateway's own recipe, run on a stand-in: any drift between the two shows here.
    theirs = Services._child_launch(cast(Services, SimpleNamespace(settings=s_child)))
    assert ours == theirs
    assert ours.max_cpu_loras == 11
    cmd = ours.command()
    assert cmd[cmd.index("--port") + 1] == "8100"
    assert cmd[cmd.index("--model") + 1] == str((tmp_path / "model").resolve())
    assert "--enable-lora" in cmd
    assert ours.log_file == tmp_path / "data" / "logs" / "engine.log"


class FakePopen:
    calls: list[dict[str, Any]] = []

    def __init__(self, args: list[str], **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.pid = 4242
        FakePopen.calls.append({"args": args, **kwargs})

    def poll(self) -> int | None:
        return None


def test_start_engine_uses_launch_command_and_key_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakePopen.calls = []
    monkeypatch.setattr(launcher.subprocess, "Popen", FakePopen)
    monkeypatch.setenv("TAILOR_ADMIN_KEY", "must-not-reach-vllm")
    launch = launcher.engine_launch(operator_settings(tmp_path), port=0)
    engine = launcher.start_engine(launch, KEY)

    (call,) = FakePopen.calls
    port = int(engine.url.rsplit(":", 1)[1])
    assert port > 0
    assert engine.url == f"http://127.0.0.1:{port}"
    assert call["args"] == EngineLaunch(**{**launch.__dict__, "port": port}).command()
    assert call["env"]["VLLM_API_KEY"] == KEY
    assert KEY not in " ".join(call["args"])  # never on the command line
    assert "TAILOR_ADMIN_KEY" not in call["env"]
    assert call["start_new_session"] is True
    assert engine.log_path == launch.log_file and launch.log_file.parent.is_dir()
    assert engine.headers == {"Authorization": f"Bearer {KEY}"}
    assert KEY not in repr(engine)


def test_wait_engine_ready_reports_an_exited_engine(tmp_path: Path) -> None:
    (tmp_path / "engine.log").write_text("line 1\nout of memory\n")
    dead = SimpleNamespace(poll=lambda: 3, returncode=3)
    engine = LocalEngine(url="http://127.0.0.1:1", key=KEY, log_path=tmp_path / "engine.log", process=cast(Any, dead))
    with pytest.raises(RuntimeError, match="vLLM exited with 3:\nline 1\nout of memory"):
        launcher.wait_engine_ready(engine, timeout_s=5)


def test_wait_engine_ready_sends_the_key_to_health(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, str]] = []

    def fake_get(url: str, *, headers: dict[str, str], timeout: float) -> httpx.Response:
        seen.append(headers)
        return httpx.Response(200 if len(seen) > 1 else 503)

    monkeypatch.setattr(launcher.httpx, "get", fake_get)
    monkeypatch.setattr(launcher.time, "sleep", lambda _s: None)
    alive = SimpleNamespace(poll=lambda: None)
    engine = LocalEngine(url="http://e", key=KEY, log_path=tmp_path / "x.log", process=cast(Any, alive))
    launcher.wait_engine_ready(engine, timeout_s=60)
    assert seen == [{"Authorization": f"Bearer {KEY}"}] * 2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still "exists"; it is dead for our purpose.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc")
def test_stop_engine_stops_the_whole_group(tmp_path: Path) -> None:
    # A leader that forks a child (as vLLM forks its engine core) and ignores SIGTERM in the child.
    script = (
        "import os, signal, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "    time.sleep(60)\n"
        "else:\n"
        "    print(pid, flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    launcher.stop_engine(cast(Any, proc))
    assert proc.returncode is not None
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
    launcher.stop_engine(cast(Any, proc))  # a second stop is harmless


# --- local_tailor: what starts and stops, in which order ----------------------------------------


@pytest.fixture
def faked_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    events: list[Any] = []
    FakePopen.calls = []
    monkeypatch.setattr(local_server.tempfile, "mkdtemp", lambda prefix: str(tmp_path / "run"))
    (tmp_path / "run").mkdir()

    def start_engine(launch: EngineLaunch, key: str, *, mock: bool = False) -> LocalEngine:
        events.append(("start_engine", launch, key))
        assert not mock
        return LocalEngine(url="http://127.0.0.1:7777", key=key, log_path=launch.log_file, process=cast(Any, "engine"))

    def popen(args: list[str], **kwargs: Any) -> Any:
        events.append(("start_gateway", kwargs["env"]))
        return "gateway"

    monkeypatch.setattr(launcher, "start_engine", start_engine)
    monkeypatch.setattr(launcher, "wait_engine_ready", lambda e: events.append(("engine_ready", e.url)))
    monkeypatch.setattr(launcher.subprocess, "Popen", popen)
    monkeypatch.setattr(launcher, "wait_gateway_ready", lambda url, *_a: events.append(("gateway_ready", url)))
    monkeypatch.setattr(launcher, "stop_gateway", lambda p: events.append(("stop", p)))
    monkeypatch.setattr(launcher, "stop_engine", lambda p: events.append(("stop", p)))
    return events


def test_local_tailor_operator_engine(tmp_path: Path, faked_processes: list[Any]) -> None:
    events = faked_processes
    extra = {"TAILOR_RUN_TRAINER": "false", "TAILOR_ENGINE_MAX_LORA_RANK": "8"}
    with local_server.local_tailor(model_dir(tmp_path), env_extra=extra, engine="operator") as server:
        assert server.engine_url == "http://127.0.0.1:7777"
        key = server.engine_key
        assert key and len(key) >= 32
        assert server.engine_headers == {"Authorization": f"Bearer {key}"}
        assert [e[0] for e in events] == ["start_engine", "engine_ready", "start_gateway", "gateway_ready"]
    _, launch, started_key = events[0]
    assert started_key == key
    assert launch.max_lora_rank == 8  # the gateway's settings, env_extra included
    assert launch.log_file == tmp_path / "run" / "logs" / "engine.log"
    env = events[2][1]
    assert env["TAILOR_ENGINE_URLS"] == "http://127.0.0.1:7777"
    assert env["TAILOR_ENGINE_API_KEY"] == key
    assert env["TAILOR_RUN_TRAINER"] == "false"
    assert events[4:] == [("stop", "gateway"), ("stop", "engine")]  # the engine after the gateway
    assert not (tmp_path / "run").exists()


def test_local_tailor_child_engine_by_default(tmp_path: Path, faked_processes: list[Any]) -> None:
    events = faked_processes
    with local_server.local_tailor(model_dir(tmp_path)) as server:
        assert server.engine is None and server.engine_url is None and server.engine_key is None
        assert server.engine_headers == {}
    assert [e[0] for e in events] == ["start_gateway", "gateway_ready", "stop"]
    env = events[0][1]
    assert env["TAILOR_ENGINE_PORT"] == "0"


def test_local_tailor_stops_both_when_the_gateway_never_gets_ready(
    tmp_path: Path, faked_processes: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_ready(*_a: Any) -> None:
        raise RuntimeError("tailor serve exited with 1")

    monkeypatch.setattr(launcher, "wait_gateway_ready", not_ready)
    with pytest.raises(RuntimeError), local_server.local_tailor(model_dir(tmp_path), engine="operator"):
        pass
    assert faked_processes[-2:] == [("stop", "gateway"), ("stop", "engine")]
    assert not (tmp_path / "run").exists()


def test_local_tailor_stops_the_engine_when_it_never_gets_ready(
    tmp_path: Path, faked_processes: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_ready(_engine: LocalEngine) -> None:
        raise RuntimeError("vLLM exited with 1")

    monkeypatch.setattr(launcher, "wait_engine_ready", not_ready)
    with pytest.raises(RuntimeError, match="vLLM"), local_server.local_tailor(model_dir(tmp_path), engine="operator"):
        pass
    assert [e[0] for e in faked_processes] == ["start_engine", "stop"]
    assert faked_processes[-1] == ("stop", "engine")


def test_local_tailor_refuses_an_unknown_engine_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="child"), local_server.local_tailor(model_dir(tmp_path), engine="x"):  # type: ignore[arg-type]
        pass
