"""keys.db (fluxgate/auth/keystore.py) and the signing secret (fluxgate/auth/keys.py)."""

from __future__ import annotations

import os
import sqlite3

import pytest

from fluxgate.auth import keystore as ks
from fluxgate.auth.keys import check_name, load_signing_key, mint_key
from fluxgate.auth.keystore import KeySpec, KeyStore, UnknownKey
from fluxgate.errors import ConfigError, KeyStoreError
from tests.support.keys import DAY, mode


class Clock:
    def __init__(self, now: float = 1_795_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    s = KeyStore.open(str(tmp_path / "state"), clock=clock)
    yield s
    s.close()


SIGNING = b"s" * 32


def gen(store, name, **spec):
    return store.generate(name, KeySpec.build(**spec), expires_in=90 * DAY, signing_key=SIGNING)


def test_created_private_wal_and_versioned(tmp_path, store):
    path = tmp_path / "state" / "keys.db"
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.schema_version == len(ks.MIGRATIONS) == 3
    gen(store, "a")
    for extra in ("keys.db-wal", "keys.db-shm"):
        if (path.parent / extra).exists():
            assert mode(path.parent / extra) == 0o600


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "keys.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(KeyStoreError, match="newer than this FluxGate"):
        KeyStore(str(path))


def test_migration_runs_once_and_keeps_rows(tmp_path, clock):
    with KeyStore.open(str(tmp_path), clock=clock) as s:
        gen(s, "kept")
    with KeyStore.open(str(tmp_path), clock=clock) as s:
        assert [r.name for r in s.all()] == ["kept"]


def test_only_the_digest_is_stored(tmp_path, store):
    record, key = gen(store, "svc", scopes=["read"])
    store.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "state").iterdir())
    assert key.encode() not in raw and key[15:].encode() not in raw  # nor the secret part
    with KeyStore.open(str(tmp_path / "state")) as again:
        row = again.by_id(record.key_id)
    assert len(row.digest) == 32 and row.digest[:12] != key.encode()[:12]


def test_generate_validates_everything(store):
    with pytest.raises(KeyStoreError, match="invalid key name"):
        gen(store, "-starts-with-dash")
    with pytest.raises(KeyStoreError, match="invalid scope"):
        gen(store, "a", scopes=["two words"])
    with pytest.raises(KeyStoreError, match="has host bits set; did you mean 10.0.0.0/8"):
        gen(store, "a", allow_ips=["10.0.0.1/8"])
    with pytest.raises(KeyStoreError, match="invalid CIDR"):
        gen(store, "a", allow_ips=["10.0.0.0/33"])
    with pytest.raises(KeyStoreError, match="must start with '/'"):
        gen(store, "a", routes=["api"])
    with pytest.raises(KeyStoreError, match="at least 1 second"):
        store.generate("a", KeySpec(), expires_in=0, signing_key=SIGNING)
    record, _ = gen(store, "a", scopes=["x", "x"], routes=["/api/"], allow_ips=["10.0.0.0/8"])
    assert record.scopes == ("x",) and record.routes == ("/api",)
    with pytest.raises(KeyStoreError, match="already exists; use `fluxctl keys rotate a`"):
        gen(store, "a")
    assert check_name("ci.pipeline:prod-1") == "ci.pipeline:prod-1"


def test_rotate_keeps_rights_and_sets_grace(store, clock):
    old, old_key = gen(store, "svc", scopes=["read"], quota=(100, 60), allow_ips=["10.0.0.0/8"])
    clock.now += 3600
    new, new_key, previous = store.rotate("svc", grace=600, expires_in=None, signing_key=SIGNING)
    assert new_key != old_key and new.key_id != old.key_id
    assert (new.scopes, new.quota_limit, new.quota_window, new.allow_ips) == (
        old.scopes, 100, 60, old.allow_ips)
    assert new.expires_at - new.created_at == old.expires_at - old.created_at  # same lifetime
    (prev,) = previous
    assert prev.successor == new.key_id and prev.grace_until == clock.now + 600
    assert prev.status(clock.now) == "grace" and new.status(clock.now) == "active"
    assert prev.valid_until == clock.now + 600
    clock.now += 601
    assert store.by_id(old.key_id).status(clock.now) == "expired"
    # Only the active key can be rotated.
    with pytest.raises(KeyStoreError, match="no active key"):
        store.revoke(new.key_id)
        store.rotate("svc", grace=0, expires_in=None, signing_key=SIGNING)


def test_renew_and_expiry(store, clock):
    record, _ = gen(store, "svc")
    clock.now += 91 * DAY
    assert store.by_name("svc")[0].status(clock.now) == "expired"
    renewed = store.renew("svc", expires_in=30 * DAY)
    assert renewed.expires_at == clock.now + 30 * DAY and renewed.status(clock.now) == "active"
    store.revoke("svc")
    with pytest.raises(UnknownKey):
        store.renew("svc", expires_in=DAY)


def test_revoke_by_name_or_id(store):
    a1, _ = gen(store, "a")
    store.rotate("a", grace=3600, expires_in=None, signing_key=SIGNING)
    gen(store, "b")
    revoked = store.revoke("a")
    assert sorted(r.key_id for r in revoked) == sorted(r.key_id for r in store.by_name("a"))
    assert all(r.revoked_at is not None for r in store.by_name("a"))
    with pytest.raises(KeyStoreError, match="already revoked"):
        store.revoke("a")
    b = store.by_name("b")[0]
    assert [r.key_id for r in store.revoke(b.key_id)] == [b.key_id]
    with pytest.raises(UnknownKey, match=r"no key named 'bb' \(did you mean 'b'\?\)"):
        store.revoke("bb")


def test_for_table_keeps_recently_dead_keys(store, clock):
    gen(store, "live")
    gen(store, "revoked")
    store.revoke("revoked")
    names = {r.name for r in store.for_table(clock.now, 7 * DAY)}
    assert names == {"live", "revoked"}
    clock.now += 8 * DAY
    assert {r.name for r in store.for_table(clock.now, 7 * DAY)} == {"live"}


def test_record_usage_keeps_the_latest(store):
    record, _ = gen(store, "svc")
    store.record_usage([(record.slot, 1000, "10.0.0.1", 5)])
    store.record_usage([(record.slot, None, None, 3)])  # a stale copy never goes backwards
    row = store.by_id(record.key_id)
    assert (row.last_used_at, row.last_used_from, row.requests) == (1000, "10.0.0.1", 5)


def test_data_version_sees_other_writers(tmp_path, clock):
    with KeyStore.open(str(tmp_path)) as watcher, KeyStore.open(str(tmp_path)) as writer:
        before = watcher.data_version()
        gen(writer, "x")
        assert watcher.data_version() != before


# ---- the signing secret ---------------------------------------------------------------------


def test_signing_secret_generated_once_private(tmp_path):
    state = str(tmp_path / "s")
    first = load_signing_key(None, state)
    assert load_signing_key(None, state) == first and len(first) >= 32
    path = tmp_path / "s" / "keys.secret"
    assert mode(path) == 0o600
    os.chmod(path, 0o644)
    assert load_signing_key(None, state) == first and mode(path) == 0o600
    assert load_signing_key("c" * 40, state) == b"c" * 40  # the config wins
    with pytest.raises(ConfigError, match="at least 32"):
        load_signing_key("short", state)
    with pytest.raises(OSError, match="does not exist"):
        load_signing_key(None, str(tmp_path / "empty"), create=False)


def test_a_different_signing_secret_is_refused(store):
    store.check_signing_key(SIGNING)
    store.check_signing_key(SIGNING)
    with pytest.raises(KeyStoreError, match="differs from the one"):
        store.check_signing_key(b"x" * 32)


def test_minted_keys_are_unique():
    assert len({mint_key(SIGNING).text for _ in range(200)}) == 200
