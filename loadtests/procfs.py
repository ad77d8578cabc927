"""Reading Linux /proc: a process's RSS, file descriptors and threads, the process tree, who listens on a port."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcStats:
    rss_mib: float
    fds: int
    threads: int


def parse_status(text: str) -> tuple[int, int]:
    """(VmRSS in KiB, Threads) from /proc/<pid>/status; a kernel thread has no VmRSS (0)."""
    rss_kib = threads = 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "VmRSS":
            rss_kib = int(value.split()[0])
        elif key == "Threads":
            threads = int(value.split()[0])
    return rss_kib, threads


def parse_ppid(stat: str) -> int:
    # The command name may contain spaces and parentheses; the fields follow the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


def listen_inodes(tcp_table: str, port: int) -> set[int]:
    """Socket inodes listening on `port` in a /proc/net/tcp or tcp6 table."""
    found = set()
    for line in tcp_table.splitlines()[1:]:
        cols = line.split()
        # local_address is ADDR:PORT in hex; state 0A is LISTEN; the inode is column 9.
        if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
            found.add(int(cols[9]))
    return found


@dataclass(frozen=True)
class ProcFS:
    root: Path = Path("/proc")

    def stats(self, pid: int) -> ProcStats | None:
        """None when the process is gone (or not ours to read)."""
        try:
            rss_kib, threads = parse_status((self.root / str(pid) / "status").read_text())
            fds = len(os.listdir(self.root / str(pid) / "fd"))
        except (OSError, ValueError, IndexError):
            return None
        return ProcStats(rss_mib=rss_kib / 1024, fds=fds, threads=threads)

    def parents(self) -> dict[int, int]:
        """pid -> parent pid for every process we can see."""
        out = {}
        for stat in self.root.glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                out[int(stat.parent.name)] = parse_ppid(stat.read_text())
        return out

    def name(self, pid: int) -> str:
        """What the process is: its command line (NULs as spaces), else its comm."""
        with contextlib.suppress(OSError):
            cmdline = (self.root / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").strip()
            if cmdline:
                return cmdline.decode(errors="replace")
        with contextlib.suppress(OSError):
            return (self.root / str(pid) / "comm").read_text().strip()
        return "?"

    def listening_pid(self, port: int) -> int | None:
        inodes: set[int] = set()
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(OSError):
                inodes |= listen_inodes((self.root / "net" / table).read_text(), port)
        wanted = {f"socket:[{i}]" for i in inodes}
        for fd_dir in self.root.glob("[0-9]*/fd"):
            with contextlib.suppress(OSError):
                if any(os.readlink(fd) in wanted for fd in fd_dir.iterdir()):
                    return int(fd_dir.parent.name)
        return None


def role(name: str) -> str:
    """A short, stable label for a process from its command line."""
    if "vllm.entrypoints" in name:
        return "engine"
    if "trainer.worker" in name:
        return "trainer"
    if "gateway.cli" in name and " serve" in name:
        return "gateway"
    first = name.split()[0] if name.split() else "?"
    # multiprocessing children run `python -c "from multiprocessing..."`; say which.
    for marker in ("resource_tracker", "spawn_main", "forkserver"):
        if marker in name:
            return marker
    return os.path.basename(first)


def label_tree(root_pid: int, parents: Mapping[int, int], name: Callable[[int], str]) -> dict[str, int]:
    """label -> pid for `root_pid` ("gateway") and every process below it ("engine/VLLM::EngineCore")."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    labels = {"gateway": root_pid}
    todo = [(root_pid, "")]
    while todo:
        pid, prefix = todo.pop(0)
        for child in sorted(children.get(pid, [])):
            base = prefix + role(name(child))
            label, n = base, 2
            while label in labels:  # two children alike: engine/python, engine/python#2
                label, n = f"{base}#{n}", n + 1
            labels[label] = child
            todo.append((child, label + "/"))
    return labels
