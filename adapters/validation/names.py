"""Adapter names: what a tenant may call an adapter (they become part of model ids)."""

from __future__ import annotations

import re

from core.errors import TailorError, bad_request

ADAPTER_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_ADAPTER_NAME = re.compile(ADAPTER_NAME_PATTERN)
_ALLOWED = (
    "use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit, "
    f"at most 63 characters ({ADAPTER_NAME_PATTERN})"
)


def validate_adapter_name(name: str) -> str:
    """Return `name` if it is a valid adapter name; it is never rewritten."""
    if not isinstance(name, str) or not name:
        raise _refused("adapter name must not be empty")
    if ":" in name or "/" in name:
        raise _refused(f"adapter name {name!r} contains ':' or '/', reserved in model ids")
    if name != name.lower():
        raise _refused(f"adapter name {name!r} has uppercase letters; names are lowercase (e.g. {name.lower()!r})")
    if not _ADAPTER_NAME.fullmatch(name):
        raise _refused(f"adapter name {name!r} is invalid")
    return name


def _refused(why: str) -> TailorError:
    return bad_request(f"{why}; {_ALLOWED}", code="invalid_adapter_name", param="name")
