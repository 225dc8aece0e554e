"""Login sessions in Redis (fluxgate/cluster/sessions.py) against a real redis-server, and
the keys derived from cluster.session_secret (fluxgate/cluster/session_keys.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from fluxgate.auth.session_crypto import SessionStoreError
from fluxgate.auth.session_db import session_digest
from fluxgate.cluster.connect import parse_store_url, redis_client
from fluxgate.cluster.session_keys import DerivedKeyRing
from fluxgate.cluster.sessions import RedisSessions, StoreUnavailable
from fluxgate.config.loader import load_config_text
from fluxgate.config.schema import Cluster
from fluxgate.errors import ConfigError

SECRET = "s" * 40
TOKENS = {"access_token": "at-1", "refresh_token": "rt-1", "id_token": "idt"}


def store(url: str, secret: str = SECRET, clock=None, **kwargs) -> RedisSessions:
    client = redis_client(parse_store_url(url), Cluster(timeout=0.5))
    keys = DerivedKeyRing(secret, rotation=3600, retention=86400,
                          **({"clock": clock} if clock else {}))
    return RedisSessions(client, "fg-test:", keys, **({"clock": clock} if clock else {}),
                         **kwargs)


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_session_made_by_one_node_opens_on_another_and_nothing_is_in_clear(redis_server):
    async def go():
        a, b = store(redis_server.url), store(redis_server.url)
        session_id, made = await a.create("p", "alice", "sid-1", TOKENS, {"scope": "read"},
                                          access_expires_at=None, idle=600, absolute=3600)
        seen = await b.load(session_id)
        assert seen is not None and seen.tokens == TOKENS and seen.claims == {"scope": "read"}
        assert seen.digest == made.digest == session_digest(session_id)
        assert await b.load("x" * 43) is None and await b.load("junk") is None
        return session_id

    session_id = run(go())
    c = redis_server.client()
    raw = b"".join(k + c.dump(k) for k in c.keys("*"))
    for secret in (session_id, *TOKENS.values()):
        assert secret.encode() not in raw
    ttl = redis_server.client().ttl(f"fg-test:session:{session_digest(session_id).hex()}")
    assert 0 < ttl <= 601  # the idle lifetime


def test_another_secret_or_a_moved_blob_does_not_open(redis_server):
    async def go():
        a = store(redis_server.url)
        first, _ = await a.create("p", "alice", None, TOKENS, {}, None, 600, 3600)
        second, _ = await a.create("p", "bob", None, {"access_token": "b"}, {}, None, 600, 3600)
        assert await store(redis_server.url, secret="t" * 40).load(first) is None
        c = redis_server.client()
        blob = c.hget(f"fg-test:session:{session_digest(first).hex()}", "secrets")
        c.hset(f"fg-test:session:{session_digest(second).hex()}", "secrets", blob)
        assert await a.load(second) is None  # bound to its own record
        assert await a.load(first) is not None

    run(go())


def test_token_update_is_a_compare_and_set_and_an_end_is_final(redis_server):
    async def go():
        a, b = store(redis_server.url), store(redis_server.url)
        session_id, made = await a.create("p", "alice", None, TOKENS, {}, 100.0, 600, 3600)
        digest = made.digest
        assert await a.update_tokens(digest, 1, {"access_token": "at-2",
                                                 "refresh_token": "rt-2"}, 200.0) == 2
        assert await b.update_tokens(digest, 1, {"access_token": "late"}, 300.0) == 0
        seen = await b.load(session_id)
        assert seen.version == 2 and seen.tokens["access_token"] == "at-2"
        assert seen.tokens["id_token"] == "idt" and seen.access_expires_at == 200
        assert await b.end(digest, "logout") and not await a.end(digest, "logout")
        assert await a.load(session_id) is None
        assert await a.update_tokens(digest, 2, {"access_token": "x"}, None) == 0
        [meta] = await a.metas([digest])
        assert meta["ended_at"] is not None and meta["end_reason"] == "logout"
        assert await a.metas([session_digest("n" * 43)]) == [None]

    run(go())


def test_idle_expiry_moves_with_activity_and_never_past_the_absolute(redis_server):
    now = [float(int(time.time()))]  # Redis expires keys by its own clock
    start = int(now[0])

    async def go():
        a = store(redis_server.url, clock=lambda: now[0])
        session_id, made = await a.create("p", "alice", None, TOKENS, {}, None, 100, 250)
        now[0] += 90
        await a.touch([(made.digest, int(now[0]))])
        now[0] += 90  # past the first idle expiry, within the moved one
        assert (await a.load(session_id)) is not None
        await a.touch([(made.digest, int(now[0]))])
        [meta] = await a.metas([made.digest])
        assert meta["idle_expires_at"] == start + 250  # capped by the absolute expiry
        now[0] += 71
        assert await a.load(session_id) is None

    run(go())


def test_back_channel_matching_by_sid_and_sub(redis_server):
    async def go():
        a = store(redis_server.url)
        _, s1 = await a.create("p", "alice", "sid-1", TOKENS, {}, None, 600, 3600)
        _, s2 = await a.create("p", "alice", "sid-2", TOKENS, {}, None, 600, 3600)
        _, s3 = await a.create("q", "alice", "sid-1", TOKENS, {}, None, 600, 3600)
        assert await a.matching("p", sid="sid-1") == [s1.digest]
        assert sorted(await a.matching("p", sub="alice")) == sorted([s1.digest, s2.digest])
        assert await a.matching("p", sub="bob", sid="sid-1") == []
        assert await a.matching("q", sub="alice", sid="sid-1") == [s3.digest]

    run(go())


def test_transactions_are_single_use_and_jti_replays_are_seen_cluster_wide(redis_server):
    async def go():
        a, b = store(redis_server.url), store(redis_server.url)
        tx = await a.begin_transaction("p", "state", "nonce", "verifier", "/back", ttl=60)
        taken = await asyncio.gather(a.take_transaction(tx), b.take_transaction(tx))
        assert sorted(t is None for t in taken) == [False, True]
        found = next(t for t in taken if t is not None)
        assert found.state_matches("state") and found.return_to == "/back"
        assert await b.take_transaction("not-an-id") is None
        assert await a.remember_jti("p", "jti-1", time.time() + 60)
        assert not await b.remember_jti("p", "jti-1", time.time() + 60)
        assert await b.remember_jti("q", "jti-1", time.time() + 60)

    run(go())


def test_the_refresh_lock_lets_one_holder_at_a_time(redis_server):
    async def go():
        a, b = store(redis_server.url), store(redis_server.url)
        digest = session_digest("d" * 43)
        inside: list[str] = []
        order: list[str] = []

        async def hold(name: str, s: RedisSessions) -> None:
            async with s.refresh_lock(digest, hold=5, wait=5):
                inside.append(name)
                assert len(inside) == 1
                await asyncio.sleep(0.2)
                order.append(name)
                inside.remove(name)

        await asyncio.gather(hold("a", a), hold("b", b))
        assert sorted(order) == ["a", "b"]
        async with a.refresh_lock(digest, hold=5, wait=1):
            with pytest.raises(StoreUnavailable):
                async with b.refresh_lock(digest, hold=5, wait=0.2):
                    pass

    run(go())


def test_a_stopped_redis_is_store_unavailable_not_an_error(redis_server):
    async def go():
        a = store(redis_server.url)
        redis_server.kill()
        with pytest.raises(StoreUnavailable):
            await a.create("p", "alice", None, TOKENS, {}, None, 600, 3600)
        with pytest.raises(StoreUnavailable):
            await a.load("a" * 43)

    run(go())


def test_a_paused_redis_is_bounded_by_the_timeout(redis_server):
    async def go():
        a = store(redis_server.url, timeout=0.3)
        await a.create("p", "alice", None, TOKENS, {}, None, 600, 3600)
        redis_server.pause()
        try:
            with pytest.raises(StoreUnavailable):
                await a.load("a" * 43)
        finally:
            redis_server.resume()

    run(go())


def test_derived_keys_rotate_and_retire():
    now = [7200.0 * 10]
    ring = DerivedKeyRing(SECRET, rotation=7200, retention=3600, clock=lambda: now[0])
    number, blob = ring.seal(b"secret", b"row")
    assert ring.open(blob, b"row") == b"secret" and ring.open(blob, b"other") is None
    now[0] += 7200  # the next key encrypts; the old one still opens
    assert ring.current_number() == number + 1 and ring.open(blob, b"row") == b"secret"
    now[0] += 3600  # retired for the retention: refused
    assert ring.open(blob, b"row") is None
    assert DerivedKeyRing("t" * 40, rotation=7200, retention=3600).open(blob, b"row") is None
    with pytest.raises(SessionStoreError):
        DerivedKeyRing("short", rotation=1, retention=1)


LOGIN_ROUTE = """
store: {store}
{cluster}
routes:
  - route: /app
    upstream: http://127.0.0.1:9
    middleware:
      - oauth2: {{issuer: https://as.example, client_id: web, client_secret: x, login: true,
                 redirect_uri: https://app.example/cb}}
"""


def test_cluster_mode_with_a_login_needs_a_session_secret():
    with pytest.raises(ConfigError, match="session_secret"):
        load_config_text(LOGIN_ROUTE.format(store="redis://127.0.0.1:6379/0", cluster=""))
    with pytest.raises(ConfigError, match="session_secret"):
        load_config_text(LOGIN_ROUTE.format(store="redis://127.0.0.1:6379/0",
                                            cluster="cluster: {session_secret: short}"))
    load_config_text(LOGIN_ROUTE.format(store="redis://127.0.0.1:6379/0",
                                        cluster=f"cluster: {{session_secret: {SECRET}}}"))
    load_config_text(LOGIN_ROUTE.format(store="sqlite", cluster=""))
