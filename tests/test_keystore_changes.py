"""keys.db's change log (fluxgate/auth/keystore.py): what ``changed_since`` returns after each
kind of write, what it leaves out, and a version-1 keys.db migrated with its rows."""

from __future__ import annotations

import sqlite3

import pytest

from fluxgate.auth import keystore as ks
from fluxgate.auth.keystore import ChangeMark, KeySpec, KeyStore

DAY = 86400
SIGNING = b"s" * 32


class Clock:
    now = 1_795_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path):
    s = KeyStore(str(tmp_path / "keys.db"), clock=Clock())
    yield s
    s.close()


def gen(store, name):
    return store.generate(name, KeySpec(), expires_in=90 * DAY, signing_key=SIGNING)[0]


def names(records) -> list[str]:
    return sorted(r.name for r in records)


def test_each_kind_of_write_is_returned_once_as_it_stands(store):
    gen(store, "a")
    gen(store, "b")
    records, mark = store.table_snapshot(store.clock(), 7 * DAY)
    assert names(records) == ["a", "b"] and store.changed_since(mark) == ([], mark)
    gen(store, "c")
    store.revoke("a")
    changed, mark2 = store.changed_since(mark)
    assert names(changed) == ["a", "c"] and changed[0].revoked_at is not None
    store.renew("b", expires_in=DAY)
    store.rotate("c", grace=60, expires_in=None, signing_key=SIGNING)
    changed, mark3 = store.changed_since(mark2)
    # b renewed; c rotated (its grace set) and its successor added.
    assert names(changed) == ["b", "c", "c"]
    assert {r.grace_until is not None for r in changed if r.name == "c"} == {True, False}
    assert store.changed_since(mark3) == ([], mark3)
    # Usage is no change of the key.
    store.record_usage([(changed[0].slot, 1_795_000_000, "10.0.0.1", 5)])
    assert store.changed_since(mark3) == ([], mark3)


def test_a_reader_over_its_limit_is_told_to_rebuild(store):
    mark = store.table_snapshot(store.clock(), 7 * DAY)[1]
    for i in range(5):
        gen(store, f"k{i}")
    assert store.changed_since(mark, limit=4) is None
    assert len(store.changed_since(mark, limit=5)[0]) == 5


def test_the_mark_keeps_growing_once_the_log_is_pruned(store):
    gen(store, "a")
    mark = store.table_snapshot(store.clock(), 7 * DAY)[1]
    store.revoke("a")
    _, later = store.changed_since(mark)
    store.forget_changes(later)
    assert store.db.execute("SELECT COUNT(*) FROM key_changes").fetchone()[0] == 0
    assert store.changed_since(later) == ([], later)
    gen(store, "b")
    store.revoke("b")
    changed, newest = store.changed_since(ChangeMark(newest_slot(store), later.seq))
    # The log's numbers go on from where they were, not from 1 again.
    assert names(changed) == ["b"] and newest.seq == later.seq + 1


def newest_slot(store) -> int:
    return store.last_slot()


def test_a_version_1_store_is_migrated_with_its_rows(tmp_path):
    path = tmp_path / "keys.db"
    db = sqlite3.connect(path)
    for statement in ks._statements(ks.MIGRATIONS[0]):
        db.execute(statement)
    db.execute("INSERT INTO keys (key_id, name, digest, created_at, expires_at) "
               "VALUES ('AAAAAAAAAAAA', 'old', x'00', 1, 2000000000)")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with KeyStore(str(path)) as store:
        assert store.schema_version == len(ks.MIGRATIONS)
        (old,) = store.all()
        assert old.name == "old" and old.scopes == () and old.allow_ips == ()
        mark = ChangeMark(old.slot, 0)
        store.db.execute("UPDATE keys SET revoked_at = 5 WHERE slot = ?", (old.slot,))
        changed, _ = store.changed_since(mark)
        assert [r.revoked_at for r in changed] == [5]


def test_a_version_2_store_moves_its_usage_into_its_own_table(tmp_path):
    path = tmp_path / "keys.db"
    db = sqlite3.connect(path)
    for migration in ks.MIGRATIONS[:2]:
        for statement in ks._statements(migration):
            db.execute(statement)
    db.executemany(
        "INSERT INTO keys (key_id, name, digest, created_at, expires_at, last_used_at, "
        "last_used_from, requests) VALUES (?, ?, x'00', 1, 2000000000, ?, ?, ?)",
        [("AAAAAAAAAAAA", "used", 1500, "10.0.0.7", 42), ("BBBBBBBBBBBB", "idle", None, None, 0)])
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    with KeyStore(str(path)) as store:
        assert store.schema_version == 3
        used, idle = store.all()
        assert (used.last_used_at, used.last_used_from, used.requests) == (1500, "10.0.0.7", 42)
        assert (idle.last_used_at, idle.last_used_from, idle.requests) == (None, None, 0)
        assert store.used() == [(used.slot, 1500, "10.0.0.7", 42)]
        columns = {row[1] for row in store.db.execute("PRAGMA table_info(keys)")}
        assert not columns & {"last_used_at", "last_used_from", "requests"}
        # usage of a slot keys.db has no key for is not recorded
        store.record_usage([(idle.slot, 1600, "10.0.0.8", 3), (999, 1600, "10.0.0.8", 3)])
        assert store.used() == [(used.slot, 1500, "10.0.0.7", 42), (idle.slot, 1600, "10.0.0.8", 3)]


def test_a_trigger_body_is_one_statement():
    assert len(ks._statements(ks.MIGRATIONS[1])) == 2
    assert ks._statements("SELECT 1; ;  \n") == ["SELECT 1;"]
