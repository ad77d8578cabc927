"""The Python grader sandbox, attacked: each abuse is refused or killed with a clear error.

The grader reports what it could do as its reward (1.0: the abuse worked), so a test fails
loudly if the sandbox ever lets one through. Skipped where the host cannot isolate at all
(the sandbox then refuses every grader, which test_unavailable_sandbox_refuses checks).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import psutil
import pytest

from trainer.graders import Sandbox, SandboxLimits
from trainer.graders.sandbox import SandboxError

LIMITS = SandboxLimits(timeout_s=5.0, memory_mib=256, max_output_bytes=64 * 1024, processes=16)


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    box = Sandbox(LIMITS)
    reason = asyncio.run(box.available())
    if reason is not None:
        pytest.skip(f"this host cannot isolate: {reason}")
    return box


async def outcome(box: Sandbox, body: str, sample: object = None, item: object = None):  # type: ignore[no-untyped-def]
    source = "def grade(sample, item):\n" + "".join(f"    {line}\n" for line in body.strip().splitlines())
    return await box.run(source, sample or {}, item or {})


async def test_a_grader_gets_sample_and_item(sandbox: Sandbox) -> None:
    result = await outcome(
        sandbox,
        "return 1.0 if sample['output_text'] == item['label'] else 0.0",
        {"output_text": "Paris"},
        {"label": "Paris"},
    )
    assert result.reward == 1.0 and result.error is None


async def test_no_network(sandbox: Sandbox) -> None:
    # A server on the host's loopback: the sandbox's loopback is its own (and down).
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        body = f"""
import socket
for address in [("127.0.0.1", {port}), ("1.1.1.1", 53), ("8.8.8.8", 443)]:
    try:
        socket.create_connection(address, timeout=1).close()
        return 1.0
    except OSError:
        pass
return 0.0
"""
        assert (await outcome(sandbox, body)).reward == 0.0
        result = await outcome(sandbox, f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)")
        assert result.reward is None and "Error" in (result.error or "")  # refused or unreachable
    finally:
        server.close()


async def test_host_files_are_not_there(sandbox: Sandbox, tmp_path: Path) -> None:
    secret = tmp_path / "tailor.db"
    secret.write_text("tenant secrets")
    paths = [str(secret), "/etc/hostname", "/etc/passwd", "/proc/self/environ", "/dev/null", str(Path.cwd()), "/tmp"]
    body = f"""
import os
for path in {paths!r}:
    if os.path.exists(path):
        return 1.0
return 0.0
"""
    assert (await outcome(sandbox, body)).reward == 0.0
    result = await outcome(sandbox, f"return float(len(open({str(secret)!r}).read()))")
    assert result.reward is None and "FileNotFoundError" in (result.error or "")


async def test_cannot_write_outside_its_work_dir(sandbox: Sandbox, tmp_path: Path) -> None:
    body = f"""
import os
open("scratch.txt", "w").write("fine")  # its own /work
written = 0
for path in ["/usr/evil", "/evil", "/work/../evil", {str(tmp_path / "evil")!r}]:
    try:
        open(path, "w").write("x")
        written += 1
    except OSError:
        pass
return float(written)
"""
    assert (await outcome(sandbox, body)).reward == 0.0
    assert not (tmp_path / "evil").exists()


async def test_cannot_get_privileges_back(sandbox: Sandbox) -> None:
    body = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
tried = [
    libc.mount(b"tmpfs", b"/usr", b"tmpfs", 0, None),        # remount what is read-only
    libc.umount2(b"/usr", 2),
    libc.unshare(0x00020000),                                # a mount namespace of its own
]
caps = [l for l in open("/proc/self/status").read().splitlines()] if os.path.exists("/proc/self/status") else []
return 1.0 if any(r == 0 for r in tried) or caps else 0.0
"""
    assert (await outcome(sandbox, body)).reward == 0.0


async def test_empty_environment(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_SECRET_KEY", "do-not-leak")
    # Python itself may add LC_CTYPE (PEP 538); nothing of the host's environment is there.
    body = "import os\nreturn float(len([k for k in os.environ if k != 'LC_CTYPE']) + str(os.environ).count('leak'))"
    assert (await outcome(sandbox, body)).reward == 0.0


async def test_spinning_forever_is_killed(sandbox: Sandbox) -> None:
    started = time.monotonic()
    result = await outcome(sandbox, "while True:\n    pass")
    assert result.reward is None and "longer than 5 s" in (result.error or "")
    assert time.monotonic() - started < LIMITS.timeout_s + 3


async def test_sleeping_forever_is_killed(sandbox: Sandbox) -> None:
    result = await outcome(sandbox, "import time\ntime.sleep(3600)")
    assert result.reward is None and "longer than" in (result.error or "")


async def test_four_gib_cannot_be_allocated(sandbox: Sandbox) -> None:
    result = await outcome(sandbox, "block = bytearray(4 << 30)\nreturn 1.0")
    assert result.reward is None and "MemoryError" in (result.error or "")


async def test_fork_bomb_is_stopped(sandbox: Sandbox) -> None:
    body = """
import os
children = 0
for _ in range(200):
    try:
        if os.fork() == 0:
            import time
            time.sleep(60)
            os._exit(0)
        children += 1
    except OSError:
        break
return float(children)
"""
    result = await outcome(sandbox, body)
    assert result.reward is not None and result.reward < LIMITS.processes
    # PID 1 of its namespace returned: every child it left sleeping is gone with it.
    await asyncio.sleep(0.5)
    left = [p for p in psutil.process_iter(["cmdline"]) if "/runner.py" in (p.info["cmdline"] or [])]
    assert left == []


async def test_megabytes_of_output_are_cut_off(sandbox: Sandbox) -> None:
    result = await outcome(sandbox, "for _ in range(100):\n    print('x' * 100_000)\nreturn 1.0")
    assert result.reward is None and "more than 65536 bytes of output" in (result.error or "")
    result = await outcome(sandbox, "import os\nos.write(1, b'y' * 10_000_000)\nreturn 1.0")
    assert result.reward is None and "output" in (result.error or "")


async def test_what_is_not_a_number_is_an_error(sandbox: Sandbox) -> None:
    for body, words in [
        ("return 'high'", "not a finite number"),
        ("return float('nan')", "not a finite number"),
        ("raise ValueError('bad item')", "ValueError: bad item"),
        ("import sys\nsys.exit(3)", "SystemExit"),
    ]:
        result = await outcome(sandbox, body)
        assert result.reward is None and words in (result.error or ""), (body, result)
    result = await sandbox.run("x = 1\n", {}, {})
    assert result.reward is None and "grade(sample, item)" in (result.error or "")


async def test_unavailable_sandbox_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fail closed: a set-up step that fails means nothing of the grader runs.
    monkeypatch.setattr("trainer.graders.sandbox.BOOT", Path(os.devnull))
    box = Sandbox(LIMITS)
    assert await box.available() is not None
    with pytest.raises(SandboxError):
        await box.run("def grade(sample, item):\n    return 1.0\n", {}, {})


async def test_no_memory_outside_the_address_space(sandbox: Sandbox) -> None:
    # Each of these held memory that no process's RLIMIT_AS counts: System V shared memory
    # (300 MiB resident past a 256 MiB limit), message queues, a nested user namespace (whose
    # own tmpfs mounts are unlimited), a memfd grown past the file-size cap.
    body = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
worked = []
worked.append(libc.shmget(0, 1 << 20, 0o1600) >= 0)           # IPC_PRIVATE | IPC_CREAT
worked.append(libc.msgget(0, 0o1600) >= 0)
worked.append(libc.syscall(240, b"q", 0o102, 0o600, None) >= 0)  # mq_open(O_CREAT | O_RDWR)
if os.fork() == 0:
    os._exit(0 if libc.unshare(0x10000000) == 0 else 1)         # CLONE_NEWUSER
worked.append(os.waitstatus_to_exitcode(os.wait()[1]) == 0)
fd = os.memfd_create("big")
try:
    for _ in range(8):
        os.write(fd, b"x" * (1 << 20))
    worked.append(True)
except OSError:
    worked.append(False)
return float(sum(1 << i for i, w in enumerate(worked) if w))
"""
    result = await outcome(sandbox, body)
    assert result.reward == 0.0, result


def test_the_memory_bound_is_what_the_readme_says() -> None:
    # README "Python graders": 16 processes x (256 MiB + 32 files x 4 MiB) + 16 + 8 MiB of tmpfs.
    assert SandboxLimits().memory_bound_mib() == 16 * (256 + 32 * 4) + 16 + 8


async def test_a_forged_answer_is_a_runtime_error(sandbox: Sandbox) -> None:
    # The answer pipe is a descriptor of the grader's own process: it can write there itself.
    for forged in [b'{"reward": 1e999}', b"[1]", b'{"reward": "x"}', b'{"reward": true}', b'{"error": 5}']:
        result = await outcome(sandbox, f"import os\nos.write(3, {forged!r})\nos._exit(0)")
        assert result.reward is None and result.kind == "runtime", (forged, result)
