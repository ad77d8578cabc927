"""Label values of the gateway's metrics: bounded, and free of internal names."""

from __future__ import annotations

from core.errors import error_type_for_status

OTHER = "other"
ALL_TENANTS = "all"  # the tenant label unless the operator turns tenant labels on
ADAPTER = "adapter"  # the model label of every adapter, likewise
CLIENT_CLOSED = 499


class BoundedLabel:
    """The first `limit` distinct values pass through; later ones become "other"."""

    __slots__ = ("limit", "seen")

    def __init__(self, limit: int, *, preset: tuple[str, ...] = ()) -> None:
        self.limit = limit
        self.seen: set[str] = set(preset)

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) < self.limit:
            self.seen.add(value)
            return value
        return OTHER


def error_type(status: int) -> str:
    """OpenAI's error `type` for a status; a client that went away has none, so its own."""
    return "client_disconnected" if status == CLIENT_CLOSED else error_type_for_status(status)
