"""Sets up the Python grader's sandbox, then runs the grader runner inside it.

Started by trainer.graders.sandbox as `python -I -S sandbox_boot.py ROOT BIND...` with an
empty environment. Standard library only, and everything imported before the identity
changes: after that this process may no longer be able to read its own interpreter's files.

Steps, each one refusing to go on when it fails (exit SETUP_FAILED, the reason on stderr):

1. unshare user, mount, network, PID, IPC and UTS namespaces; print READY and wait for the
   parent to write the user and group maps (ns root = an unprivileged host uid when the
   parent is root, else the parent's own uid), then become that root and, when the
   parent is root, drop the supplementary groups (an unprivileged parent's maps deny setgroups).
2. fork: the child is PID 1 of the new PID namespace, so when it ends every process the
   grader started ends with it.
3. the child closes what would hold memory outside any process's address space (and so
   outside RLIMIT_AS): through a proc of its own namespaces, mounted only for this, no
   System V shared memory segments or message queues, no POSIX message queues and no
   nested user namespaces (whose own mounts could add tmpfs);
   it mounts a size-limited tmpfs on ROOT, bind-mounts each BIND path read-only at the
   same place inside it (the interpreter and the system libraries), adds a writable tmpfs
   /work, makes the rest read-only, pivot_roots into it and detaches the old root.
4. resource limits (address space, CPU time, file size, open files, processes), no new
   privileges, an empty capability bounding set, then exec the runner with an empty
   environment: it starts with no capabilities at all.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys

SETUP_FAILED = 70
READY = b"tailor-sandbox-ready\n"

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
SYS_PIVOT_ROOT, SYS_CAPSET = 155, 126  # x86_64
LINUX_CAPABILITY_VERSION_3 = 0x20080522

libc = ctypes.CDLL(None, use_errno=True)


def fail(step: str) -> None:
    err = ctypes.get_errno()
    os.write(2, f"sandbox setup failed at {step}: {os.strerror(err) if err else 'error'}\n".encode())
    os._exit(SETUP_FAILED)


def check(result: int, step: str) -> None:
    if result != 0:
        fail(step)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None

    check(libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def read_only_bind(source: str, target: str) -> None:
    mount(source, target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def make_path(root: str, path: str, *, directory: bool) -> str:
    target = root + path
    if directory:
        os.makedirs(target, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        if not os.path.exists(target):
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
    return target


def drop_capabilities() -> None:
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    cap = 0
    while libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    if cap < 32:  # the kernel knows at least 38 capabilities: dropping stopped early
        fail("capability bounding set")
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    # Clear the inheritable set (kept across exec for root otherwise): header + two data words.
    header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    check(libc.syscall(SYS_CAPSET, header, data), "capset")


def set_limits(limits: dict[str, int]) -> None:
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), (value, value))


class Bind:
    """A path to show read-only inside the sandbox, looked at before the identity changes (the
    namespace's root may not be allowed to walk to it, e.g. a Python under /root): a symlink
    is copied, anything else bind-mounted through a descriptor opened now."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.link = os.readlink(path) if os.path.islink(path) else None
        self.directory = os.path.isdir(path)
        self.fd = None if self.link is not None else os.open(path, os.O_PATH | os.O_CLOEXEC)

    def place(self, root: str) -> None:
        if self.link is not None:
            os.makedirs(os.path.dirname(root + self.path), mode=0o755, exist_ok=True)
            os.symlink(self.link, root + self.path)
            return
        target = make_path(root, self.path, directory=self.directory)
        read_only_bind(f"/proc/self/fd/{self.fd}", target)


# Limits of this namespace's IPC and user namespaces, each written 0: nothing of them at all.
CLOSED_SYSCTLS = (
    "kernel/shmmax",
    "kernel/shmall",
    "kernel/shmmni",
    "kernel/msgmni",
    "fs/mqueue/queues_max",
    "user/max_user_namespaces",
)


def close_namespace_memory(proc: str) -> None:
    os.makedirs(proc, mode=0o755, exist_ok=True)
    mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in CLOSED_SYSCTLS:
        path = f"{proc}/sys/{name}"
        try:
            with open(path, "w") as fh:
                fh.write("0\n")
            with open(path) as fh:
                if fh.read().strip() != "0":
                    raise OSError(f"{name} did not take 0")
        except OSError as exc:
            os.write(2, f"sandbox setup failed at closing {name}: {exc}\n".encode())
            os._exit(SETUP_FAILED)
    check(libc.umount2(proc.encode(), MNT_DETACH), "unmount proc")
    os.rmdir(proc)


def child(
    root: str, binds: list[Bind], runner: str, limits: dict[str, int], tmpfs_mib: int, root_tmpfs_mib: int
) -> None:
    check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "parent-death signal")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, f"size={root_tmpfs_mib}m,mode=0755")
    close_namespace_memory(root + "/.proc")
    for bind in binds:
        bind.place(root)
    work = make_path(root, "/work", directory=True)
    mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"size={tmpfs_mib}m,mode=0777")
    with open(root + "/runner.py", "w") as fh:
        fh.write(runner)
    old = make_path(root, "/.old", directory=True)
    check(libc.syscall(SYS_PIVOT_ROOT, root.encode(), old.encode()), "pivot_root")
    os.chdir("/")
    check(libc.umount2(b"/.old", MNT_DETACH), "detach old root")
    os.rmdir("/.old")
    mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir("/work")
    set_limits(limits)
    drop_capabilities()
    os.execve(sys.executable, [sys.executable, "-I", "-S", "-B", "/runner.py"], {})


def main() -> None:
    root, config_path = sys.argv[1], sys.argv[2]
    with open(config_path) as fh:
        config = json.load(fh)
    with open(config["runner_path"]) as fh:
        runner = fh.read()
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    check(libc.unshare(flags), "unshare")
    # Opened in the new mount namespace (a bind's source must be in it), while this process is
    # still the host identity that could walk to them.
    binds = [Bind(path) for path in config["binds"]]
    os.write(1, READY)
    if os.read(0, 1) != b"g":  # the parent writes the maps, then says go
        fail("waiting for the user namespace maps")
    try:
        if config["drop_groups"]:  # only a privileged parent's maps allow setgroups
            os.setgroups([])
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    except OSError as exc:
        os.write(2, f"sandbox setup failed at becoming the namespace's root: {exc}\n".encode())
        os._exit(SETUP_FAILED)
    pid = os.fork()
    if pid == 0:
        try:
            child(root, binds, runner, config["limits"], config["tmpfs_mib"], config["root_tmpfs_mib"])
        except BaseException as exc:  # noqa: BLE001 - any failure before exec refuses to run
            os.write(2, f"sandbox setup failed: {type(exc).__name__}: {exc}\n".encode())
        os._exit(SETUP_FAILED)
    _, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


if __name__ == "__main__":
    main()
