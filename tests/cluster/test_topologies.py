"""Each cluster part's Redis layer on Redis Cluster (3 masters) and on Sentinel (a primary, a
replica, one Sentinel), through the clients ``redis_client`` builds from the store URL: the
keys' write and merge scripts and catch-up, pub/sub delivery, the quota grant script under
concurrency, the session store's scripts and pipelines, the shared introspection results.

One cluster and one Sentinel set serve the whole module (each test uses its own prefix)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time

import pytest
import redis

from fluxgate.auth.session_db import session_digest
from fluxgate.cluster.channel import subscribe_forever
from fluxgate.cluster.connect import MASTER_RECHECK, parse_store_url, redis_client
from fluxgate.cluster.introspection import SharedResults
from fluxgate.cluster.keyops import ClusterKeyOps
from fluxgate.cluster.keysync import KeyNames, StoreUnavailable
from fluxgate.cluster.lease_store import LeaseStore, identity_hash
from fluxgate.cluster.session_keys import DerivedKeyRing
from fluxgate.cluster.sessions import RedisSessions
from fluxgate.config.loader import load_config_text
from fluxgate.config.schema import Cluster
from fluxgate.errors import KeyStoreError
from tests.support.cluster_keys import import_generated
from tests.support.lease_grants import grant_concurrently
from tests.support.redis_topologies import RedisCluster, RedisSentinel, _require_redis

pytestmark = pytest.mark.slow

SECRET = "cluster-test-signing-secret-0123456789"
_prefixes = itertools.count()


@pytest.fixture(scope="module", params=["cluster", "sentinel"])
def topology(request, tmp_path_factory):
    """A running Redis Cluster or Sentinel set (``.url``), shared by the module's tests."""
    _require_redis()
    directory = tmp_path_factory.mktemp(request.param)
    made = (RedisCluster if request.param == "cluster" else RedisSentinel)(directory)
    try:
        yield made.start()
    finally:
        made.kill()


@pytest.fixture
def prefix() -> str:
    return f"t{next(_prefixes)}:"


def client(url: str, asynchronous: bool = True, timeout: float = 1.0):
    return redis_client(parse_store_url(url), Cluster(timeout=timeout), asynchronous=asynchronous)


def node_config(tmp_path, name: str, url: str, prefix: str):
    state = tmp_path / name
    state.mkdir(exist_ok=True)
    return load_config_text(
        f"state_dir: {state}\nstore: '{url}'\n"
        f"cluster: {{node: {name}, timeout: 1, prefix: '{prefix}'}}\n"
        f"api_keys: {{signing_secret: '{SECRET}'}}\n"
        "routes:\n  - {route: /a, upstream: 'http://127.0.0.1:9', public: true}\n")


# ---- API keys: the write and merge scripts, catch-up by generation ----------------------


def test_keys_written_on_one_node_reach_another_and_a_name_is_taken_once(
        topology, tmp_path, prefix):
    a = ClusterKeyOps(node_config(tmp_path, "a", topology.url, prefix))
    b = ClusterKeyOps(node_config(tmp_path, "b", topology.url, prefix))
    try:
        made = a.generate("alice", scopes=["read"], quota="100/d")
        assert b.mirror.catch_up() is True
        assert b.store.by_id(made["key_id"]).digest == a.store.by_id(made["key_id"]).digest
        with pytest.raises(KeyStoreError, match="already exists"):
            a.generate("alice")
        b.generate("bob")
        revoked = b.revoke("alice")
        assert [k["key_id"] for k in revoked] == [made["key_id"]]
        assert a.mirror.catch_up() is True
        record = a.store.by_id(made["key_id"])
        assert record.status(record.created_at + 1) == "revoked"
        assert a.store.by_name("bob") and a.mirror.generation == b.mirror.generation
        assert a.mirror.catch_up() is False
    finally:
        a.close()
        b.close()


def test_a_stale_node_write_is_merged_then_refused_on_the_same_name(topology, tmp_path, prefix):
    a = ClusterKeyOps(node_config(tmp_path, "a", topology.url, prefix))
    b = ClusterKeyOps(node_config(tmp_path, "b", topology.url, prefix))
    try:
        a.generate("carol")
        b.rotate("carol", grace="1h")  # b had not caught up: the script refuses, b merges
        a.mirror.catch_up()
        assert len(a.store.by_name("carol")) == 2
    finally:
        a.close()
        b.close()


def test_an_import_by_pipelined_scripts_reaches_another_node(
        topology, tmp_path, prefix, monkeypatch):
    from fluxgate.cluster import keysync

    monkeypatch.setattr(keysync, "WRITE_BATCH", 7)  # several scripts in each pipeline
    a = ClusterKeyOps(node_config(tmp_path, "a", topology.url, prefix))
    b = ClusterKeyOps(node_config(tmp_path, "b", topology.url, prefix))
    try:
        topology.client().script_flush()  # the pipeline must load its script itself
        doc = import_generated(a, tmp_path, [{"name": f"bulk{i}"} for i in range(30)])
        assert doc["committed"] and doc["imported"] == 30
        b.mirror.catch_up()
        assert len(b.store.all()) == 30 and b.mirror.generation == a.mirror.generation
    finally:
        a.close()
        b.close()


# ---- pub/sub ------------------------------------------------------------------------------


def test_pubsub_delivers_on_the_store_client(topology, prefix):
    async def go():
        listener, sender = client(topology.url), client(topology.url)
        got: list[bytes] = []
        subscribed = asyncio.Event()
        task = asyncio.create_task(subscribe_forever(
            listener, prefix + "events", got.append, on_subscribed=subscribed.set))
        try:
            await asyncio.wait_for(subscribed.wait(), 10)
            for n in range(3):
                await sender.publish(prefix + "events", f"m{n}".encode())
            deadline = time.monotonic() + 10
            while len(got) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if isinstance(topology, RedisCluster):
                # redis-py may send successive PUBLISHes to different nodes, and a message
                # published on another node than the listener's crosses the cluster bus:
                # their order is not kept (m1, m2, m0 was seen). FluxGate's messages carry
                # no order (nodes catch up by generation); each must arrive, once.
                assert sorted(got) == [b"m0", b"m1", b"m2"]
            else:
                assert got == [b"m0", b"m1", b"m2"]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await listener.aclose()
            await sender.aclose()

    asyncio.run(go())


# ---- quota leasing: the grant script --------------------------------------------------------


def test_concurrent_grants_never_pass_the_limit(topology, prefix):
    end = (int(time.time()) // 86400 + 1) * 86400
    given = grant_concurrently(
        lambda name: LeaseStore(client(topology.url, asynchronous=False), prefix, name),
        4, identity_hash(b"k"), end, chunk=7, limit=500, join=60)
    assert sum(given) == 500


# ---- sessions and introspection results ---------------------------------------------------


def test_session_scripts_and_pipelines(topology, prefix):
    tokens = {"access_token": "at-1", "refresh_token": "rt-1"}

    async def go():
        ring = DerivedKeyRing("s" * 40, rotation=3600, retention=86400)
        a = RedisSessions(client(topology.url), prefix, ring)
        b = RedisSessions(client(topology.url), prefix, ring)
        session_id, made = await a.create("p", "alice", "sid-1", tokens, {}, 100.0, 600, 3600)
        other_id, _ = await a.create("p", "alice", None, tokens, {}, 100.0, 600, 3600)
        assert (await b.load(session_id)).tokens == tokens
        assert await b.update_tokens(made.digest, 1, {"access_token": "at-2"}, 200.0) == 2
        assert await a.update_tokens(made.digest, 1, {"access_token": "late"}, 300.0) == 0
        await a.touch([(made.digest, int(time.time()))])
        topology.client().script_flush()  # as a Redis restarted empty: the script is gone
        seen = int(time.time()) + 5
        await a.touch([(made.digest, seen)])
        assert int((await b.record(made.digest))["last_seen_at"]) == seen
        metas = await b.metas([made.digest, b"\0" * 32])
        assert metas[0]["version"] == 2 and metas[1] is None
        assert len(await b.matching("p", sub="alice")) == 2
        async with b.refresh_lock(made.digest, hold=5, wait=1):
            pass
        assert await b.end(made.digest, "logout") is True
        assert await a.end(made.digest, "logout") is False
        assert await a.load(session_id) is None and await a.load(other_id) is not None
        assert await a.remember_jti("p", "jti-1", time.time() + 60) is True
        assert await b.remember_jti("p", "jti-1", time.time() + 60) is False
        await a.publish({"type": "end"})

    asyncio.run(go())


def test_introspection_results_and_purges_are_shared(topology, prefix):
    digest = hashlib.sha256(b"token").digest()

    async def go():
        a = SharedResults(client(topology.url), prefix, timeout=2.0, describe="test")
        b = SharedResults(client(topology.url), prefix, timeout=2.0, describe="test")
        purged: list[bytes] = []
        b.listen(purged.append)
        try:
            expires_at = time.time() + 30
            a.put("prov", digest, expires_at, True, b"record")
            deadline = time.monotonic() + 10
            while await b.get("prov", digest) is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert await b.get("prov", digest) == (expires_at, True, b"record")
            await asyncio.sleep(0.5)  # b's subscription
            await a.purge(["prov", "other"], digest)
            while not purged and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert purged == [digest] and await b.get("prov", digest) is None
        finally:
            await a.close()
            await b.close()

    asyncio.run(go())


# ---- a Sentinel failover ----------------------------------------------------------------


async def _eventually(call, seconds: float = 15.0):
    """``call()``'s result once it stops failing (each failure: a connection to the old
    primary, found stale once); the last failure after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await call()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def generate_eventually(ops: ClusterKeyOps, name: str, seconds: float = 5.0) -> None:
    """Make key ``name`` once the store answers (StoreUnavailable until then)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            ops.generate(name)
            break
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert ops.store.by_name(name)


def test_every_part_writes_to_the_new_primary_after_a_sentinel_failover(
        redis_sentinel, tmp_path):
    prefix = "fo:"
    ops = ClusterKeyOps(node_config(tmp_path, "a", redis_sentinel.url, prefix))
    ops.generate("before")

    async def go():
        ring = DerivedKeyRing("s" * 40, rotation=3600, retention=86400)
        sessions = RedisSessions(client(redis_sentinel.url), prefix, ring)
        leases = LeaseStore(client(redis_sentinel.url), prefix, "a")
        listener, sender = client(redis_sentinel.url), client(redis_sentinel.url)
        got: list[bytes] = []
        task = asyncio.create_task(subscribe_forever(listener, prefix + "ch", got.append))
        end = (int(time.time()) // 86400 + 1) * 86400
        session_id, made = await sessions.create("p", "alice", None, {"access_token": "a"}, {},
                                                 None, 600, 3600)
        assert (await leases.grant(identity_hash(b"k"), end, 5, 100, 0))[0] == 5
        try:
            new_port = await asyncio.to_thread(redis_sentinel.failover)
            # Each client asks Sentinel again within MASTER_RECHECK: until then a write may
            # still reach the old primary, which takes writes until Sentinel demotes it.
            await asyncio.sleep(MASTER_RECHECK)
            assert (await _eventually(lambda: leases.grant(identity_hash(b"k"), end, 5, 100,
                                                           5)))[:2] == [5, 10]
            assert (await _eventually(lambda: sessions.load(session_id))).sub == "alice"
            assert await _eventually(lambda: sessions.end(made.digest, "logout")) is True
            await _eventually(lambda: sender.publish(prefix + "ch", b"after"))
            deadline = time.monotonic() + 10
            while b"after" not in got and time.monotonic() < deadline:
                await sender.publish(prefix + "ch", b"after")
                await asyncio.sleep(0.2)
            assert b"after" in got
            return new_port, sessions.record_key(made.digest)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    try:
        new_port, record_key = asyncio.run(go())
        time.sleep(MASTER_RECHECK)
        generate_eventually(ops, "after")  # a stale connection fails once
        generation = ops.mirror.generation
    finally:
        ops.close()
    primary = redis.Redis(host="127.0.0.1", port=new_port)
    assert primary.info("replication")["role"] == "master"
    assert primary.hget(record_key, "ended_at")  # the end was written on the new primary
    assert int(primary.get(KeyNames.of(prefix).generation)) == generation  # the key "after"


def test_every_part_works_after_a_redis_cluster_master_fails_over(tmp_path):
    _require_redis()
    (tmp_path / "replicated").mkdir()
    made = RedisCluster(tmp_path / "replicated", replicas=1)
    prefix = "cf:"
    try:
        made.start()
        ops = ClusterKeyOps(node_config(tmp_path, "a", made.url, prefix))
        try:
            ops.generate("before")
            made.failover(KeyNames.of(prefix).generation)  # the keys' slot changes master
            generate_eventually(ops, "after")  # a redirection to the new master
        finally:
            ops.close()

        async def go():
            ring = DerivedKeyRing("s" * 40, rotation=3600, retention=86400)
            sessions = RedisSessions(client(made.url), prefix, ring)
            leases = LeaseStore(client(made.url), prefix, "a")
            end = (int(time.time()) // 86400 + 1) * 86400
            session_id, _ = await _eventually(lambda: sessions.create(
                "p", "alice", None, {"access_token": "a"}, {}, None, 600, 3600))
            assert (await _eventually(lambda: sessions.load(session_id))).sub == "alice"
            made.failover(sessions.record_key(session_digest(session_id)))
            assert (await _eventually(lambda: sessions.load(session_id))).sub == "alice"
            given = await _eventually(lambda: leases.grant(identity_hash(b"k"), end, 5, 100, 0))
            assert given[0] == 5

        asyncio.run(go())
    finally:
        made.kill()
