"""Console sessions (gateway.console.auth and .sessions) on SQLite and PostgreSQL: the signed
cookie names a server-side session that sign-out, expiry, a revoked key, a deleted tenant or
a changed admin key ends, for every copy of the cookie."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from core.config import Settings
from core.db import Database
from core.ids import utcnow
from core.models import ConsoleSession
from gateway import tenants
from gateway.console import auth, sessions


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, admin_key="adm", secret_key="s3cret")


def sign_in(db: Database, settings: Settings, key: str) -> tuple[auth.ConsoleUser, str]:
    """The signed-in user (as the next request sees it) and the session cookie."""
    user = auth.login(db, settings, key)
    assert user is not None
    cookie = auth.start_session(db, settings, user)
    return auth.current_user(db, settings, cookie), cookie


def test_admin_session_round_trip_and_tampering(db: Database, settings: Settings) -> None:
    user, cookie = sign_in(db, settings, "adm")
    assert "adm" not in cookie
    again = auth.current_user(db, settings, cookie)
    assert (again.role, again.csrf, again.session) == (auth.ADMIN, user.csrf, user.session) and again.session
    for bad in (None, "", cookie[:-2] + "xx", cookie + "x"):
        with pytest.raises(auth.LoginRequired):
            auth.current_user(db, settings, bad)


def test_a_cookie_captured_before_sign_out_is_refused_after_it(db: Database, settings: Settings) -> None:
    acme = tenants.create_tenant(db, "acme")
    key = tenants.create_key(db, acme.id)
    for secret in ("adm", key.secret):
        user, cookie = sign_in(db, settings, secret)
        _, other_cookie = sign_in(db, settings, secret)
        assert auth.current_user(db, settings, cookie).role == user.role
        auth.end_session(db, auth.current_user(db, settings, cookie))
        with pytest.raises(auth.LoginRequired):
            auth.current_user(db, settings, cookie)
        # Only that session: another sign-in with the same key goes on.
        assert auth.current_user(db, settings, other_cookie).role == user.role


def test_only_a_hash_of_the_session_token_is_stored(db: Database, settings: Settings) -> None:
    user, _ = sign_in(db, settings, "adm")
    with db.session() as s:
        ids = list(s.scalars(select(ConsoleSession.id)))
    assert len(ids) == 1 and user.session not in ids[0] and len(ids[0]) == 64


def test_tenant_sessions_end_with_their_key_or_tenant(db: Database, settings: Settings) -> None:
    acme = tenants.create_tenant(db, "acme")
    revoked, expiring, kept = (tenants.create_key(db, acme.id) for _ in range(3))
    cookies = {k.info.id: sign_in(db, settings, k.secret)[1] for k in (revoked, expiring, kept)}
    user = auth.current_user(db, settings, cookies[kept.info.id])
    assert (user.role, user.tenant_id, user.tenant_name, user.key_id) == (auth.TENANT, acme.id, "acme", kept.info.id)

    tenants.revoke_key(db, revoked.info.id)
    tenants.rotate_key(db, expiring.info.id, grace_seconds=1)
    with pytest.raises(auth.LoginRequired):
        auth.current_user(db, settings, cookies[revoked.info.id])
    assert auth.current_user(db, settings, cookies[expiring.info.id]).key_id == expiring.info.id  # in its grace
    assert sessions.find_live(
        db, auth._load(settings, cookies[expiring.info.id])["s"], utcnow() + timedelta(seconds=2)
    ) == sessions.LiveSession(  # type: ignore[index]
        role=auth.TENANT, tenant_id=acme.id, tenant_name="acme", key_id=expiring.info.id, key_live=False
    )

    tenants.delete_tenant(db, acme.id)
    with pytest.raises(auth.LoginRequired):
        auth.current_user(db, settings, cookies[kept.info.id])


def test_sessions_end_when_the_secret_or_admin_key_changes(db: Database, settings: Settings, tmp_path: Path) -> None:
    _, cookie = sign_in(db, settings, "adm")
    for other in (
        Settings(data_dir=tmp_path, admin_key="adm", secret_key="another"),
        Settings(data_dir=tmp_path, admin_key="new-admin-key", secret_key="s3cret"),
        Settings(data_dir=tmp_path, secret_key="s3cret"),  # admin key removed
    ):
        with pytest.raises(auth.LoginRequired):
            auth.current_user(db, other, cookie)


def test_sessions_expire(db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    user, cookie = sign_in(db, settings, "adm")
    # The server-side end holds even for a cookie whose signature is still fresh.
    assert sessions.find_live(db, user.session, utcnow() + timedelta(seconds=auth.SESSION_MAX_AGE_S + 1)) is None
    monkeypatch.setattr(auth, "SESSION_MAX_AGE_S", -1)
    with pytest.raises(auth.LoginRequired):
        auth.current_user(db, settings, cookie)
    monkeypatch.undo()
    # Rows past their end are cleared by the next sign-in.
    with db.session() as s:
        s.execute(update(ConsoleSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    _, fresh = sign_in(db, settings, "adm")
    with db.session() as s:
        assert len(list(s.scalars(select(ConsoleSession.id)))) == 1
    with pytest.raises(auth.LoginRequired):
        auth.current_user(db, settings, cookie)
    assert auth.current_user(db, settings, fresh).is_admin
