"""Identifiers, API keys and the clock.

API keys are 256-bit random strings, so a fast hash (SHA-256) is enough at rest: nobody
can brute-force that space, and a slow KDF would cost every request a few milliseconds.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timezone

KEY_PREFIX = "tk-"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    """`value` in UTC; a naive one is taken to be UTC already, the zone every stored time is in."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def new_id(prefix: str, sep: str = "-") -> str:
    # OpenAI's own ids differ in the separator: `chatcmpl-...` but `resp_...`, `msg_...`.
    return f"{prefix}{sep}{secrets.token_hex(12)}"


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_hint(key: str) -> str:
    """What may be shown of a key after creation: enough to tell keys apart."""
    return key[: len(KEY_PREFIX) + 4] + "..." + key[-4:]
