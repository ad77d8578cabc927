"""Tests for gateway.tenants: tenants and API keys, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import text

from core.db import Database
from core.errors import TailorError
from core.ids import KEY_PREFIX, utcnow
from gateway import tenants as t

# --- tenants -----------------------------------------------------------------------


def test_create_list_find_delete(db: Database) -> None:
    acme = t.create_tenant(db, "acme")
    beta = t.create_tenant(db, "beta-2")
    assert acme.id.startswith("ten-") and acme.id != beta.id
    assert acme.name == "acme" and acme.created_at is not None

    assert [x.name for x in t.list_tenants(db)] == ["acme", "beta-2"]
    assert t.find_tenant(db, "acme") == acme
    assert t.find_tenant(db, acme.id).name == "acme"

    t.delete_tenant(db, "acme")
    assert [x.name for x in t.list_tenants(db)] == ["beta-2"]
    with pytest.raises(TailorError) as err:
        t.find_tenant(db, "acme")
    assert err.value.status == 404
    t.delete_tenant(db, beta.id)  # by id too
    assert t.list_tenants(db) == []


def test_unknown_tenant_is_404(db: Database) -> None:
    for call in (
        lambda: t.find_tenant(db, "nope"),
        lambda: t.delete_tenant(db, "nope"),
        lambda: t.create_key(db, "nope"),
        lambda: t.list_keys(db, "nope"),
    ):
        with pytest.raises(TailorError) as err:
            call()
        assert err.value.status == 404


@pytest.mark.parametrize("name", ["", "Acme", "-acme", "_acme", "ac me", "acme!", "é", "a" * 65, "acme\n", "acme/../x"])
def test_invalid_tenant_names_are_400(db: Database, name: str) -> None:
    with pytest.raises(TailorError) as err:
        t.create_tenant(db, name)
    assert err.value.status == 400
    assert err.value.param == "name"
    assert t.list_tenants(db) == []


@pytest.mark.parametrize("name", ["a", "0", "acme_corp-1", "a" * 64])
def test_valid_tenant_names(db: Database, name: str) -> None:
    assert t.create_tenant(db, name).name == name


def test_duplicate_tenant_is_409(db: Database) -> None:
    first = t.create_tenant(db, "acme")
    with pytest.raises(TailorError) as err:
        t.create_tenant(db, "acme")
    assert err.value.status == 409
    assert err.value.code == "tenant_exists"
    assert t.list_tenants(db) == [first]


# --- keys --------------------------------------------------------------------------


def test_key_secret_shown_once_and_only_hash_stored(db: Database) -> None:
    tenant = t.create_tenant(db, "acme")
    new = t.create_key(db, "acme", name="ci")
    secret = new.secret
    assert secret.startswith(KEY_PREFIX) and len(secret) > 40
    assert new.info.tenant_id == tenant.id and new.info.name == "ci"
    assert not hasattr(new.info, "secret")
    assert secret not in new.info.hint and new.info.hint.startswith(secret[:7])

    with db.session() as s:
        rows = s.execute(text("SELECT * FROM api_keys")).mappings().all()
    assert len(rows) == 1
    row = rows[0]
    assert row["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    for column, value in row.items():
        assert secret not in str(value), f"secret stored in column {column}"
        assert secret[len(KEY_PREFIX) :] not in str(value), f"secret body stored in column {column}"

    listed = t.list_keys(db, "acme")
    assert [k.id for k in listed] == [new.info.id]
    assert all(secret not in repr(k) for k in listed)


def test_keys_are_distinct(db: Database) -> None:
    t.create_tenant(db, "acme")
    secrets = {t.create_key(db, "acme").secret for _ in range(5)}
    assert len(secrets) == 5
    assert len(t.list_keys(db, "acme")) == 5


def test_authenticate(db: Database) -> None:
    acme = t.create_tenant(db, "acme")
    key = t.create_key(db, "acme")
    caller = t.authenticate(db, key.secret)
    assert caller == t.Caller(tenant_id=acme.id, tenant_name="acme", key_id=key.info.id)
    assert t.authenticate(db, key.secret + "x") is None
    assert t.authenticate(db, key.secret[:-1]) is None
    assert t.authenticate(db, "") is None
    assert t.authenticate(db, key.info.hint) is None
    assert t.authenticate(db, hashlib.sha256(key.secret.encode()).hexdigest()) is None


def test_keys_authenticate_as_their_own_tenant_only(db: Database) -> None:
    a = t.create_tenant(db, "tenant-a")
    b = t.create_tenant(db, "tenant-b")
    key_a = t.create_key(db, "tenant-a")
    key_b = t.create_key(db, b.id)
    caller_a = t.authenticate(db, key_a.secret)
    caller_b = t.authenticate(db, key_b.secret)
    assert caller_a is not None and caller_b is not None
    assert (caller_a.tenant_id, caller_a.tenant_name, caller_a.key_id) == (
        a.id,
        "tenant-a",
        key_a.info.id,
    )
    assert (caller_b.tenant_id, caller_b.tenant_name, caller_b.key_id) == (
        b.id,
        "tenant-b",
        key_b.info.id,
    )
    assert [k.id for k in t.list_keys(db, "tenant-a")] == [key_a.info.id]
    assert [k.id for k in t.list_keys(db, "tenant-b")] == [key_b.info.id]


def test_revoked_key_fails(db: Database) -> None:
    t.create_tenant(db, "acme")
    key = t.create_key(db, "acme")
    other = t.create_key(db, "acme")
    info = t.revoke_key(db, key.info.id)
    assert info.revoked_at is not None
    assert t.authenticate(db, key.secret) is None
    assert t.authenticate(db, other.secret) is not None  # only that key
    # Revoking again keeps the first revocation time.
    assert t.revoke_key(db, key.info.id).revoked_at == info.revoked_at
    with pytest.raises(TailorError) as err:
        t.revoke_key(db, "key-nope")
    assert err.value.status == 404


def test_expired_key_fails(db: Database) -> None:
    t.create_tenant(db, "acme")
    expired = t.create_key(db, "acme", expires_at=utcnow() - timedelta(seconds=1))
    valid = t.create_key(db, "acme", expires_at=utcnow() + timedelta(hours=1))
    assert t.authenticate(db, expired.secret) is None
    assert t.authenticate(db, valid.secret) is not None
    assert t.list_keys(db, "acme")[1].expires_at is not None


def test_deleting_tenant_removes_its_keys(db: Database) -> None:
    t.create_tenant(db, "acme")
    t.create_tenant(db, "other")
    key = t.create_key(db, "acme")
    keep = t.create_key(db, "other")
    t.delete_tenant(db, "acme")
    assert t.authenticate(db, key.secret) is None
    assert t.authenticate(db, keep.secret) is not None
    with db.session() as s:
        assert s.execute(text("SELECT count(*) FROM api_keys")).scalar() == 1
    # The name is free again, and the old key does not come back with it.
    t.create_tenant(db, "acme")
    assert t.authenticate(db, key.secret) is None


def test_naive_expiry_is_taken_as_utc(db: Database) -> None:
    t.create_tenant(db, "acme")
    naive_now = utcnow().replace(tzinfo=None)
    expired = t.create_key(db, "acme", expires_at=naive_now - timedelta(minutes=5))
    valid = t.create_key(db, "acme", expires_at=naive_now + timedelta(minutes=5))
    assert t.authenticate(db, expired.secret) is None
    assert t.authenticate(db, valid.secret) is not None


def test_returned_times_are_utc_aware_and_stable(db: Database) -> None:
    created = t.create_tenant(db, "acme")
    key = t.create_key(db, "acme")
    revoked = t.revoke_key(db, key.info.id)
    listed = t.list_tenants(db)[0]
    (listed_key,) = t.list_keys(db, "acme")
    for value in (
        created.created_at,
        listed.created_at,
        key.info.created_at,
        revoked.revoked_at,
        listed_key.created_at,
        listed_key.revoked_at,
    ):
        assert value is not None and value.utcoffset() == timedelta(0)
    assert listed == created  # what create returned is what a later read returns
    assert listed_key.revoked_at == revoked.revoked_at
    assert abs(utcnow() - listed.created_at) < timedelta(minutes=5)
