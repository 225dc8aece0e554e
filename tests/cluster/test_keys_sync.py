"""The cluster's API keys in a real redis-server: writes through one node's keys.db reach
another's by generation, the log's gaps, a Redis that lost its data, hostile records."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from fluxgate.cluster.keyops import ClusterKeyOps
from fluxgate.cluster.keyrecords import BadRecord, apply_records, decode, encode, unpushed
from fluxgate.cluster.keysync import KeyMirror, KeyNames, StoreUnavailable
from fluxgate.config.loader import load_config_text
from fluxgate.errors import ConfigError, KeyStoreError
from tests.support.cluster_keys import import_generated

SECRET = "cluster-test-signing-secret-0123456789"


def config(tmp_path, name: str, url: str, secret: str | None = SECRET):
    state = tmp_path / name
    state.mkdir(exist_ok=True)
    text = (
        f"state_dir: {state}\nstore: '{url}'\ncluster: {{node: {name}, timeout: 0.5}}\n"
        + (f"api_keys: {{signing_secret: '{secret}'}}\n" if secret else "")
        + "routes:\n  - {route: /a, upstream: 'http://127.0.0.1:9', public: true}\n"
    )
    return load_config_text(text)


@pytest.fixture
def nodes(tmp_path, redis_server):
    made = []

    def make(name: str, url: str | None = None) -> ClusterKeyOps:
        ops = ClusterKeyOps(config(tmp_path, name, url or redis_server.url))
        made.append(ops)
        return ops

    yield make
    for ops in made:
        ops.close()


def status(ops: ClusterKeyOps, key_id: str) -> str | None:
    record = ops.store.by_id(key_id)
    return None if record is None else record.status(record.created_at + 1)


def test_a_key_made_on_one_node_reaches_another_by_generation(nodes, redis_server):
    a, b = nodes("a"), nodes("b")
    made = a.generate("alice", scopes=["read"], quota="100/d")
    assert made["key"].startswith("fg_") and made["name"] == "alice"
    assert b.store.by_id(made["key_id"]) is None
    assert b.mirror.catch_up() is True
    record = b.store.by_id(made["key_id"])
    assert record.scopes == ("read",) and (record.quota_limit, record.quota_window) == (100, 86400)
    assert record.digest == a.store.by_id(made["key_id"]).digest
    assert b.mirror.generation == a.mirror.generation
    assert b.mirror.catch_up() is False  # nothing new: one MGET


def test_a_name_cannot_be_taken_twice_from_two_nodes(nodes):
    a, b = nodes("a"), nodes("b")
    a.generate("bob")
    with pytest.raises(KeyStoreError, match="already exists"):
        b.generate("bob")  # b had not caught up: its write is refused, it catches up, refuses


def test_revoke_and_rotate_travel_and_a_revocation_is_never_undone(nodes, redis_server):
    a, b = nodes("a"), nodes("b")
    first = a.generate("carol")
    rotated = b.rotate("carol", grace="1h")
    assert rotated["previous"][0]["key_id"] == first["key_id"]
    a.mirror.catch_up()
    assert a.store.by_id(first["key_id"]).successor == rotated["key_id"]
    revoked = a.revoke("carol")
    assert {k["key_id"] for k in revoked} == {first["key_id"], rotated["key_id"]}
    effects = b.mirror.take_effects()
    b.mirror.catch_up()
    effects = b.mirror.take_effects()
    assert set(effects.revoked) == {first["key_id"], rotated["key_id"]}
    # Someone writes the record back unrevoked: the node keeps it revoked.
    names = KeyNames.of("fluxgate:")
    client = redis_server.client()
    raw = orjson.loads(client.hget(names.records, first["key_id"]))
    raw["revoked_at"] = None
    client.hset(names.records, first["key_id"], orjson.dumps(raw))
    client.xadd(names.log, {"ids": first["key_id"]}, id=f"{int(client.get(names.generation)) + 1}-0")
    client.incr(names.generation)
    b.mirror.catch_up()
    assert b.store.by_id(first["key_id"]).revoked_at is not None


def test_a_node_behind_a_trimmed_log_reads_every_record(nodes, redis_server):
    a, b = nodes("a"), nodes("b")
    made = [a.generate(f"n{i}")["key_id"] for i in range(5)]
    redis_server.client().xtrim(KeyNames.of("fluxgate:").log, maxlen=1)
    assert b.mirror.catch_up() is True
    assert all(b.store.by_id(k) is not None for k in made)
    assert b.mirror.generation == a.mirror.generation


def test_redis_restarted_empty_is_seeded_from_the_nodes_revocations_winning(nodes, redis_server):
    a, b = nodes("a"), nodes("b")
    kept = a.generate("dave")["key_id"]
    gone = a.generate("erin")["key_id"]
    b.mirror.catch_up()
    redis_server.restart(empty=True)
    # Only b learns of a revocation (written to its keys.db while Redis was empty-handed).
    b.store.revoke(gone)
    assert a.mirror.catch_up() is True  # a re-seeds Redis from its keys.db
    assert b.mirror.catch_up() is True  # b merges its own, the revocation with it
    assert a.mirror.catch_up() is True  # a reads the merge back
    assert a.store.by_id(gone).revoked_at is not None
    assert a.store.by_id(kept).revoked_at is None
    assert a.mirror.epoch == b.mirror.epoch
    # Writes work again afterwards, from either node.
    b.generate("frank")
    a.mirror.catch_up()
    assert a.store.by_name("frank")


def test_writes_fail_clearly_when_redis_is_down_and_reads_still_answer(nodes, redis_server):
    a = nodes("a")
    a.generate("gina")
    redis_server.stop()
    with pytest.raises(StoreUnavailable, match=r"redis://127\.0\.0\.1:\d+/0 cannot be reached"):
        a.generate("hank")
    with pytest.raises(StoreUnavailable):
        a.revoke("gina")
    assert [k["name"] for k in a.list()] == ["gina"]  # from keys.db
    assert a.store.by_name("hank") == []
    redis_server.start()
    a.generate("hank")


@pytest.mark.parametrize("raw", [
    b"not json", b"[1, 2]", b'{"key_id": "x"}', b"{" + b" " * 20000 + b"}",
])
def test_hostile_records_are_refused_and_logged(nodes, redis_server, raw, caplog):
    a, b = nodes("a"), nodes("b")
    victim = a.generate("ivy")["key_id"]
    b.mirror.catch_up()
    a.revoke("ivy")
    names = KeyNames.of("fluxgate:")
    client = redis_server.client()
    client.hset(names.records, victim, raw)  # the revoked record replaced by garbage
    b.mirror.catch_up()
    assert b.mirror.refused == 1
    assert b.store.by_id(victim).revoked_at is None  # b's copy kept as it was ...
    assert "refused" in caplog.text
    a.generate("jack")  # ... and the service goes on
    b.mirror.catch_up()
    assert b.store.by_name("jack")


def test_a_record_with_wrong_types_or_a_new_digest_is_refused(nodes):
    a = nodes("a")
    record = a.store.by_id(a.generate("kim")["key_id"])
    good = orjson.loads(encode(record))
    assert decode(record.key_id, encode(record)).digest == record.digest
    for field, value in [("expires_at", "soon"), ("expires_at", True), ("scopes", "read"),
                         ("scopes", [1]), ("name", "bad name"), ("digest", "00"),
                         ("quota_limit", 5), ("routes", ["no-slash"]), ("key_id", "other")]:
        with pytest.raises(BadRecord):
            decode(record.key_id, orjson.dumps({**good, field: value}))
    # A known key id with another digest (a key swapped under its id) is refused.
    swapped = dataclasses.replace(record, digest=bytes(32), expires_at=record.expires_at + 1)
    applied = apply_records(a.store, [swapped])
    assert applied.refused == [record.key_id] and applied.changed == []
    assert a.store.by_id(record.key_id) == record


def test_cluster_mode_needs_the_shared_signing_secret(tmp_path, redis_server):
    with pytest.raises(ConfigError, match="signing_secret"):
        KeyMirror(config(tmp_path, "a", redis_server.url, secret=None))
    first = ClusterKeyOps(config(tmp_path, "a", redis_server.url))
    first.generate("lee")
    other = ClusterKeyOps(config(tmp_path, "b", redis_server.url, secret="another-secret-" + "x" * 24))
    try:
        with pytest.raises(ConfigError, match="differs"):
            other.mirror.catch_up()
    finally:
        first.close()
        other.close()


def test_an_import_on_one_node_reaches_the_others_by_batches(nodes, tmp_path, monkeypatch):
    from fluxgate.cluster import keysync

    monkeypatch.setattr(keysync, "WRITE_BATCH", 7)  # several batches, several pipelines
    monkeypatch.setattr(keysync, "PUSH_SLOTS", 40)
    a, b = nodes("a"), nodes("b")
    a.generate("before")
    doc = import_generated(a, tmp_path, [{"name": f"bulk{i}", "quota": "10/m"}
                                         for i in range(100)])
    assert doc["committed"] and doc["imported"] == 100
    b.mirror.catch_up()
    assert len(b.store.all()) == 101 and b.mirror.generation == a.mirror.generation
    with pytest.raises(KeyStoreError, match="already exists"):
        b.generate("bulk5")


def test_an_import_needs_redis_before_it_starts(nodes, tmp_path, redis_server):
    a = nodes("a")
    redis_server.stop()
    with pytest.raises(StoreUnavailable):
        import_generated(a, tmp_path, [{"name": "one"}])
    assert a.store.all() == []


def test_an_import_cut_off_midway_is_finished_by_the_next_catch_up(
        nodes, tmp_path, monkeypatch, redis_server):
    from fluxgate.cluster import keysync

    monkeypatch.setattr(keysync, "PUSH_SLOTS", 30)
    a, b = nodes("a"), nodes("b")
    a.generate("first")
    first_write = a.mirror.write_records

    def stop_after_one(records):
        first_write(records)
        redis_server.stop()  # Redis goes away after the first slice of the import

    monkeypatch.setattr(a.mirror, "write_records", stop_after_one)
    with pytest.raises(StoreUnavailable, match="sent when"):
        import_generated(a, tmp_path, [{"name": f"cut{i}"} for i in range(100)])
    monkeypatch.setattr(a.mirror, "write_records", first_write)
    redis_server.start()
    assert redis_server.client().hlen("{fluxgate:keys}:records") == 31
    a.mirror.catch_up()  # resumes the push
    assert redis_server.client().hlen("{fluxgate:keys}:records") == 101
    b.mirror.catch_up()
    assert len(b.store.all()) == 101
    assert unpushed(a.store) is None  # nothing left to send
    assert a.mirror.catch_up() is False
