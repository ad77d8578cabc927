"""A port this process listens on, for tests of what Tailor does when a port is taken."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def listening_port() -> Iterator[int]:
    """A loopback port with a listener on it until the block ends."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]
