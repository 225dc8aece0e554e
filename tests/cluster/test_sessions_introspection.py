"""Shared introspection results (fluxgate/cluster/introspection.py) on a real redis-server:
what one node stores another reads, keyed by the token's digest; purges reach every node,
and a purge Redis could not take is retried when it answers; a Redis that fails is left
alone for a while, never raised."""

from __future__ import annotations

import asyncio
import hashlib
import time

from fluxgate.cluster.connect import parse_store_url, redis_client
from fluxgate.cluster.introspection import SharedResults
from fluxgate.config.schema import Cluster

TOKEN = b"opaque-token-value"
DIGEST = hashlib.sha256(TOKEN).digest()


def shared(url: str) -> SharedResults:
    client = redis_client(parse_store_url(url), Cluster(timeout=0.3))
    return SharedResults(client, "t:", timeout=1.0, describe="redis://test")


async def until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return True
        await asyncio.sleep(0.05)
    return False


def test_a_result_stored_by_one_node_is_read_by_another_until_it_expires(redis_server):
    async def go():
        a, b = shared(redis_server.url), shared(redis_server.url)
        try:
            expires_at = time.time() + 30
            a.put("prov", DIGEST, expires_at, True, b"record")
            a.put("prov", hashlib.sha256(b"gone").digest(), time.time() - 1, True, b"old")
            assert await until(lambda: _found(b, DIGEST))
            found = await b.get("prov", DIGEST)
            assert found == (expires_at, True, b"record")
            assert await b.get("other-provider", DIGEST) is None
            assert await b.get("prov", hashlib.sha256(b"gone").digest()) is None
            a.put("prov", hashlib.sha256(b"no").digest(), time.time() + 5, False, b"inactive")
            assert await until(lambda: _found(b, hashlib.sha256(b"no").digest()))
            assert (await b.get("prov", hashlib.sha256(b"no").digest()))[1] is False
        finally:
            await a.close()
            await b.close()
        client = redis_server.client()
        keys = client.keys("t:introspection:*")
        assert keys and all(TOKEN not in k for k in keys)
        assert f"t:introspection:prov:{DIGEST.hex()}".encode() in keys
        assert 0 < client.pttl(f"t:introspection:prov:{DIGEST.hex()}") <= 30_000

    asyncio.run(go())


async def _found(node: SharedResults, digest: bytes) -> bool:
    return await node.get("prov", digest) is not None


def test_a_purge_reaches_every_node_and_one_redis_missed_is_retried(redis_server):
    async def go():
        a, b = shared(redis_server.url), shared(redis_server.url)
        purged: list[bytes] = []
        b.listen(purged.append)
        try:
            await asyncio.sleep(0.3)  # subscribed
            a.put("prov", DIGEST, time.time() + 60, True, b"record")
            assert await until(lambda: _found(b, DIGEST))
            assert await a.purge(["prov"], DIGEST)
            assert await until(lambda: _true(purged == [DIGEST]))
            assert await b.get("prov", DIGEST) is None
            # Redis away: the purge is kept and done when it is back (its data kept).
            a.put("prov", DIGEST, time.time() + 60, True, b"record")
            assert await until(lambda: _found(b, DIGEST))
            redis_server.stop()
            assert not await a.purge(["prov"], DIGEST, keep_for=60)
            assert await a.get("prov", DIGEST) is None  # left alone: no wait
            assert a.counts["skipped"] >= 1 and not a.up
            redis_server.start()
            key = f"t:introspection:prov:{DIGEST.hex()}"
            assert redis_server.client().exists(key)
            a.listen(lambda digest: None)  # its subscription retries the purge
            assert await until(lambda: _true(not redis_server.client().exists(key)))
            assert not a._pending
        finally:
            await a.close()
            await b.close()

    asyncio.run(go())


async def _true(value: bool) -> bool:
    return value
