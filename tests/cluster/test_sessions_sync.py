"""ClusterSessions (fluxgate/cluster/session_sync.py): two nodes' masters, each with its own
SQLite copies, on one real redis-server. Events, the sweep, fetch, and Redis going away."""

from __future__ import annotations

import asyncio

import pytest

from fluxgate.auth.session_backend import StoreUnavailable
from fluxgate.auth.session_db import session_digest
from fluxgate.auth.sessions import SessionStore
from fluxgate.cluster.connect import parse_store_url, redis_client
from fluxgate.cluster.session_keys import DerivedKeyRing
from fluxgate.cluster.session_sync import ClusterSessions
from fluxgate.cluster.sessions import RedisSessions
from fluxgate.config.schema import Cluster

SECRET = "s" * 40
TOKENS = {"access_token": "at-1", "refresh_token": "rt-1"}


def node(tmp_path, url: str, name: str) -> ClusterSessions:
    keys = DerivedKeyRing(SECRET, rotation=3600, retention=86400)
    redis = RedisSessions(redis_client(parse_store_url(url), Cluster(timeout=0.3)), "t:",
                          keys, timeout=1.0)
    return ClusterSessions(redis, SessionStore.open(str(tmp_path / name)), name, lock_wait=2)


def with_nodes(tmp_path, url: str, test, *names: str, start: bool = False) -> None:
    """Runs ``await test(*nodes)`` on one node per name (their pub/sub listeners started if
    ``start``), and closes every node after, whatever the test did."""
    async def go():
        nodes = [node(tmp_path, url, name) for name in names]
        try:
            if start:
                for each in nodes:
                    each.start()
            await test(*nodes)
        finally:
            for each in nodes:
                await each.close()

    asyncio.run(go())


async def until(condition, timeout: float = 3.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


async def login(a: ClusterSessions) -> tuple[str, bytes]:
    session_id = await a.create("p", "alice", "sid-1", TOKENS, {"scope": "read"}, None,
                                idle=600, absolute=3600)
    return session_id, session_digest(session_id)


def test_fetch_copies_a_session_made_elsewhere_and_an_end_event_ends_the_copy(tmp_path,
                                                                               redis_server):
    async def go(a, b):
        session_id, digest = await login(a)
        assert a.local.load(session_id) is not None  # the creator has its copy
        assert b.local.load(session_id) is None
        assert await b.fetch(session_id)
        copy = b.local.load(session_id)
        assert copy is not None and copy.tokens == TOKENS and copy.sub == "alice"
        await asyncio.sleep(0.3)  # both subscribed
        assert await b.end(digest, "logout")
        assert b.local.load(session_id) is None
        assert await until(lambda: a.local.load(session_id) is None)
        assert a.local.list(include_ended=True)[0].state == "logout"
        assert not await a.fetch(session_id)  # ended in Redis: never revived
        assert not await b.fetch("x" * 43) and not await b.fetch("junk")

    with_nodes(tmp_path, redis_server.url, go, "a", "b", start=True)


def test_a_refresh_on_one_node_reaches_the_others_copy(tmp_path, redis_server):
    async def go(a, b):
        session_id, digest = await login(a)
        await b.fetch(session_id)
        await asyncio.sleep(0.3)
        async with a.refresh_lock(digest, hold=5):
            assert await a.update_tokens(digest, 1, {"access_token": "at-2"}, 12345.0)
        assert not await b.update_tokens(digest, 1, {"access_token": "late"}, None)
        assert await until(lambda: b.local.load(session_id).version == 2)
        copy = b.local.load(session_id)
        assert copy.tokens["access_token"] == "at-2" and copy.access_expires_at == 12345

    with_nodes(tmp_path, redis_server.url, go, "a", "b", start=True)


def test_the_sweep_pushes_ends_made_on_the_node_and_ends_copies_redis_lost(tmp_path,
                                                                           redis_server):
    async def go(a, b):
        first, first_digest = await login(a)
        second, second_digest = await login(a)
        await b.fetch(first)
        await b.fetch(second)
        # fluxctl on node B ends its copy in the file; the master pushes it.
        assert b.local.end(first_digest, "revoked")
        await b.sync()
        await a.sync()
        assert a.local.load(first) is None
        assert a.local.list(include_ended=True)[0].state == "revoked"
        # A record Redis no longer has (expired, or Redis restarted empty) ends copies.
        redis_server.client().delete(f"t:session:{second_digest.hex()}")
        await a.sync()
        assert a.local.load(second) is None
        assert a.local.list(include_ended=True)[1].state == "expired"
        assert a.synced_at > 0 and a.local.synced_at() == int(a.synced_at)

    with_nodes(tmp_path, redis_server.url, go, "a", "b")


def test_activity_on_one_node_keeps_the_session_alive_on_the_other(tmp_path, redis_server):
    async def go(a, b):
        session_id, digest = await login(a)
        await b.fetch(session_id)
        before = a.local.load(session_id).idle_expires_at
        b._seen_pushed -= 120  # the sweep pushes activity seen since its last run
        assert b.local.touch(digest, now=before - 600 + 90)  # activity 90 s later
        await b.sync()
        [meta] = await a.redis.metas([digest])
        assert meta["idle_expires_at"] == before + 90
        await a.sync()
        assert a.local.load(session_id).idle_expires_at == before + 90

    with_nodes(tmp_path, redis_server.url, go, "a", "b")


def test_with_redis_down_a_logout_ends_the_copy_and_reaches_redis_after(tmp_path,
                                                                         redis_server):
    async def go(a, b):
        session_id, digest = await login(a)
        await b.fetch(session_id)
        redis_server.stop()
        assert await b.end(digest, "logout")  # the copy ends at once
        assert b.local.load(session_id) is None and not b.up
        assert (await b.load(session_id)) is None  # falls back to the copy
        assert (await a.load(session_id)) is not None  # A's copy: A cannot know
        with pytest.raises(StoreUnavailable):
            await a.create("p", "bob", None, TOKENS, {}, None, 600, 3600)
        with pytest.raises(StoreUnavailable):
            await b.sync()
        redis_server.start()
        await b.sync()  # pushes the logout
        assert b.up
        await a.sync()
        assert a.local.load(session_id) is None

    with_nodes(tmp_path, redis_server.url, go, "a", "b")


def test_hostile_events_are_ignored(tmp_path, redis_server):
    async def go(a):
        session_id, digest = await login(a)
        await asyncio.sleep(0.3)
        c = redis_server.client()
        for junk in (b"not json", b"[]", b'{"digest": "zz"}', b'{"op": "end"}',
                     b'{"op": "end", "digest": "00", "reason": "logout"}',
                     b'{"op": "end", "digest": "' + b"ab" * 32 + b'", "reason": 5}'):
            c.publish("t:sessions:events", junk)
        # Its own announcement is not applied twice; another node's end is.
        c.publish("t:sessions:events", b'{"op": "end", "node": "a", "reason": "logout", '
                  b'"digest": "' + digest.hex().encode() + b'"}')
        await asyncio.sleep(0.3)
        assert a.local.load(session_id) is not None
        c.publish("t:sessions:events", b'{"op": "end", "node": "b", "reason": "evil", '
                  b'"digest": "' + digest.hex().encode() + b'"}')
        assert await until(lambda: a.local.load(session_id) is None)
        assert a.local.list(include_ended=True)[0].state == "revoked"  # unknown reason

    with_nodes(tmp_path, redis_server.url, go, "a", start=True)


def test_ends_made_while_the_master_was_stopped_are_pushed_at_its_next_start(tmp_path,
                                                                           redis_server):
    async def go(a, b):
        session_id, digest = await login(a)
        await b.fetch(session_id)
        await b.close()
        # fluxctl on node B while its gateway is stopped.
        with SessionStore.open(str(tmp_path / "b")) as offline:
            assert offline.end(digest, "revoked")
        restarted = node(tmp_path, redis_server.url, "b")
        try:
            await restarted.sync()
            await a.sync()
            assert a.local.load(session_id) is None
        finally:
            await restarted.close()

    with_nodes(tmp_path, redis_server.url, go, "a", "b")


def test_fetches_are_single_flight_and_bounded(tmp_path, redis_server, monkeypatch):
    from fluxgate.cluster import session_sync

    async def go(a, b):
        reads = []
        real = b.redis.record

        async def counted(digest):
            reads.append(digest)
            await asyncio.sleep(0.2)
            return await real(digest)

        b.redis.record = counted
        session_id, _ = await login(a)
        assert await asyncio.gather(*(b.fetch(session_id) for _ in range(20))) == [True] * 20
        assert len(reads) == 1
        monkeypatch.setattr(session_sync, "MAX_FETCHES", 2)
        made_up = ["m" * 42 + str(i) for i in range(3)]
        results = await asyncio.gather(*(b.fetch(m) for m in made_up),
                                       return_exceptions=True)
        assert results.count(False) == 2
        assert sum(isinstance(r, StoreUnavailable) for r in results) == 1
        assert b.status()["fetches_refused"] == 1

    with_nodes(tmp_path, redis_server.url, go, "a", "b")


def test_a_refresh_reads_only_the_record_and_its_write_outlasts_a_blip(tmp_path, redis_server):
    async def go(a):
        session_id, digest = await login(a)
        redis_server.pause()
        resume = None
        try:
            assert (await a.load(session_id)) is not None  # the copy, for a logout
            with pytest.raises(StoreUnavailable):  # never a stale refresh token
                await a.load(session_id, authoritative=True)
            resume = asyncio.get_running_loop().call_later(0.8, redis_server.resume)
            # The token server has rotated: the write is tried again past the blip.
            assert await a.update_tokens(digest, 1, {"refresh_token": "rt-2"}, None)
        finally:
            if resume is not None:
                resume.cancel()
            redis_server.resume()
        session = await a.load(session_id, authoritative=True)
        assert session.version == 2 and session.tokens["refresh_token"] == "rt-2"

    with_nodes(tmp_path, redis_server.url, go, "a")
