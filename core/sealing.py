"""Seal secrets that Tailor must keep to use later (a teacher endpoint's API key).

Tailor's own API keys are only ever stored as hashes (core.ids): it never needs them back.
A key for someone else's endpoint has to be read again by the trainer worker that runs the
job, so it is stored encrypted (Fernet: AES-128-CBC with an HMAC) and opened only there.

The sealing key comes from TAILOR_SECRET_KEY (any string; hashed to a Fernet key). Without
it, a random key is created once in `<data_dir>/secret.key` (mode 0600): enough for one
host, where the gateway and its trainer child share the data directory. Gateways and
trainers on several hosts must all be given the same TAILOR_SECRET_KEY.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from core.config import Settings
from core.errors import TailorError

_KEY_FILE = "secret.key"


def _fernet_key(secret: str) -> bytes:
    return base64.urlsafe_b64encode(hashlib.sha256(secret.encode("utf-8")).digest())


def _key_file_secret(data_dir: Path) -> str:
    path = data_dir / _KEY_FILE
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")
    try:
        # O_EXCL: of two processes creating it at once, one writes and both read that one.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="ascii").strip()
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secret)
    return secret


def secret(settings: Settings) -> str:
    """The sealing secret: TAILOR_SECRET_KEY, else `<data_dir>/secret.key` (created once).
    Also the root of other keys that must agree across hosts (the console's sessions)."""
    return settings.secret_key.get_secret_value() if settings.secret_key else _key_file_secret(settings.data_dir)


def _fernet(settings: Settings) -> Fernet:
    return Fernet(_fernet_key(secret(settings)))


def seal(settings: Settings, plaintext: str) -> str:
    return _fernet(settings).encrypt(plaintext.encode("utf-8")).decode("ascii")


def unseal(settings: Settings, token: str) -> str:
    try:
        return _fernet(settings).decrypt(token.encode("ascii")).decode("utf-8")
    except (InvalidToken, ValueError):
        raise TailorError(
            500,
            "A stored secret cannot be opened with this host's sealing key: give every gateway "
            "and trainer the same TAILOR_SECRET_KEY.",
            code="secret_unreadable",
        ) from None
