"""Who is using the console: a signed session cookie naming a server-side session,
re-checked against the database on every request, and a CSRF token per session.

The cookie holds a random session token and the CSRF token, never a key. It is signed
with a key derived from the same secret that `core.sealing` uses (TAILOR_SECRET_KEY,
else `<data_dir>/secret.key`), so every gateway sharing that secret and database accepts
the others' sessions. The session itself is a row of `console_sessions`
(gateway.console.sessions): it ends after SESSION_MAX_AGE_S, at sign-out (for every
copy of the cookie), when its tenant key is revoked or expires, or when the admin key
changes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

from core import sealing
from core.config import Settings
from core.db import Database
from core.errors import TailorError
from gateway import audit, tenants

from . import sessions

SESSION_COOKIE = "tailor_console"
LOGIN_COOKIE = "tailor_console_login"
COOKIE_PATH = "/console"
SESSION_MAX_AGE_S = 8 * 3600
LOGIN_MAX_AGE_S = 3600
ADMIN = "admin"
TENANT = "tenant"


class LoginRequired(Exception):
    """No valid session: the console answers with the login page (or a redirect to it)."""


def _forbidden(message: str) -> TailorError:
    return TailorError(403, message, code="forbidden")


@dataclass(frozen=True)
class ConsoleUser:
    role: str  # ADMIN | TENANT
    csrf: str
    tenant_id: str | None = None  # TENANT only
    tenant_name: str | None = None
    key_id: str | None = None
    session: str = field(default="", repr=False)  # the cookie's session token: sign-out revokes it

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    @property
    def actor(self) -> str:
        """The audit log's actor: the console, then who signed in to it."""
        return "console:admin" if self.is_admin else f"console:{audit.actor_for_key(self.key_id or '')}"

    def may_see(self, tenant_id: str) -> bool:
        return self.is_admin or tenant_id == self.tenant_id

    def require_admin(self) -> None:
        if not self.is_admin:
            raise _forbidden("Only operators (the admin key) may do this.")


# --- the signing key --------------------------------------------------------------


def signing_key(settings: Settings) -> bytes:
    """A key for console cookies only, derived from core.sealing's secret.

    Domain-separated with HMAC, so a cookie signature reveals nothing about the key that
    seals stored secrets. Mirrors core.sealing's choice of source; see the note there on
    giving every host the same TAILOR_SECRET_KEY.
    """
    base = sealing.secret(settings)
    return hmac.new(base.encode("utf-8"), b"tailor-console-session-v1", hashlib.sha256).digest()


def _serializer(settings: Settings, salt: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(signing_key(settings), salt=salt)


def _admin_fingerprint(settings: Settings) -> str | None:
    """Ties an admin session to the admin key it was opened with: changing the key ends it."""
    if settings.admin_key is None:
        return None
    key = settings.admin_key.get_secret_value().encode("utf-8")
    return hmac.new(signing_key(settings), key, hashlib.sha256).hexdigest()[:32]


# --- login --------------------------------------------------------------------------


def is_admin_key(settings: Settings, key: str) -> bool:
    configured = settings.admin_key
    if configured is None:
        return False
    return hmac.compare_digest(key.encode("utf-8"), configured.get_secret_value().encode("utf-8"))


def login(db: Database, settings: Settings, key: str) -> ConsoleUser | None:
    """The user a key signs in as: the operator for the admin key, a tenant for its key."""
    key = key.strip()
    if not key:
        return None
    csrf = secrets.token_urlsafe(32)
    if is_admin_key(settings, key):
        return ConsoleUser(role=ADMIN, csrf=csrf)
    caller = tenants.authenticate(db, key)
    if caller is None:
        return None
    return ConsoleUser(
        role=TENANT, csrf=csrf, tenant_id=caller.tenant_id, tenant_name=caller.tenant_name, key_id=caller.key_id
    )


def start_session(db: Database, settings: Settings, user: ConsoleUser) -> str:
    """Open a server-side session for `user`; returns the signed cookie value."""
    token = sessions.open_session(
        db, user.role, tenant_id=user.tenant_id, key_id=user.key_id, max_age_s=SESSION_MAX_AGE_S
    )
    data: dict[str, Any] = {"s": token, "c": user.csrf}
    if user.is_admin:
        data["a"] = _admin_fingerprint(settings)
    return _serializer(settings, "tailor.console.session").dumps(data)


def end_session(db: Database, user: ConsoleUser) -> None:
    sessions.revoke(db, user.session)


def _load(settings: Settings, cookie: str | None) -> dict[str, Any] | None:
    if not cookie:
        return None
    try:
        data = _serializer(settings, "tailor.console.session").loads(cookie, max_age=SESSION_MAX_AGE_S)
    except BadSignature:  # also SignatureExpired
        return None
    return data if isinstance(data, dict) else None


def current_user(db: Database, settings: Settings, cookie: str | None) -> ConsoleUser:
    """The session's user, checked again now: raises LoginRequired when it no longer holds."""
    data = _load(settings, cookie)
    if data is None or not isinstance(data.get("c"), str) or not isinstance(data.get("s"), str):
        raise LoginRequired
    # Not cached: a sign-out or a revoked key must end the session at the very next request.
    live = sessions.find_live(db, data["s"])
    if live is None:
        raise LoginRequired
    if live.role == ADMIN:
        expected = _admin_fingerprint(settings)
        if expected is None or not hmac.compare_digest(str(data.get("a", "")), expected):
            raise LoginRequired
        return ConsoleUser(role=ADMIN, csrf=data["c"], session=data["s"])
    if live.role != TENANT or live.tenant_name is None or not live.key_live:
        raise LoginRequired
    return ConsoleUser(
        role=TENANT,
        csrf=data["c"],
        tenant_id=live.tenant_id,
        tenant_name=live.tenant_name,
        key_id=live.key_id,
        session=data["s"],
    )


# --- CSRF -------------------------------------------------------------------------


def check_csrf(expected: str, given: str | None) -> None:
    if not given or not hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8")):
        raise _forbidden("The form has expired or did not come from this console; reload the page and try again.")


def new_login_token(settings: Settings) -> tuple[str, str]:
    """(token for the form, signed value for the login cookie): login CSRF before any session."""
    token = secrets.token_urlsafe(32)
    return token, _serializer(settings, "tailor.console.login").dumps(token)


def check_login_token(settings: Settings, cookie: str | None, given: str | None) -> bool:
    if not cookie or not given:
        return False
    try:
        token = _serializer(settings, "tailor.console.login").loads(cookie, max_age=LOGIN_MAX_AGE_S)
    except BadSignature:
        return False
    return isinstance(token, str) and hmac.compare_digest(token.encode("utf-8"), given.encode("utf-8"))
