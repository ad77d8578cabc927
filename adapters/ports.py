"""Local TCP ports for child engines: pick a free one, check one is free, see who listens."""

from __future__ import annotations

import socket


def _bind(host: str, port: int) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        # The same option vLLM sets, so a port we call free is one vLLM can bind.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        return int(sock.getsockname()[1])


def pick_free_port(host: str) -> int:
    """A port nobody listens on now. Someone may take it before the engine binds it; the
    supervisor sees that from the engine's exit and picks again."""
    return _bind(host, 0)


def port_is_free(host: str, port: int) -> bool:
    try:
        _bind(host, port)
    except OSError:
        return False
    return True


def tree_listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` or one of its descendants holds a listening socket on `port`."""
    return listener_under(pid, port) is not None


def listener_under(pid: int, port: int) -> int | None:
    """The process, `pid` or one of its descendants, that listens on `port`; None if none does."""
    # psutil comes with vLLM, which a child engine needs anyway.
    import psutil

    try:
        root = psutil.Process(pid)
        for proc in (root, *root.children(recursive=True)):
            try:
                conns = proc.net_connections(kind="inet")
            except psutil.NoSuchProcess:
                continue  # a descendant that ended while we looked
            if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns):
                return int(proc.pid)
    except psutil.Error:
        return None
    return None
