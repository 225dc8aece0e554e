"""The store URL's forms, and redis-py clients made from it against a real redis-server."""

from __future__ import annotations

import asyncio

import pytest
import trustme

from fluxgate.cluster.connect import (
    StoreUrlError,
    hash_tagged,
    is_redis_url,
    parse_store_url,
    redis_client,
)
from fluxgate.config.schema import Cluster
from tests.support.certs import write_pair
from tests.support.redis_server import RedisServer, redis_unavailable


@pytest.mark.parametrize(
    ("url", "topology", "tls", "hosts", "db", "service"),
    [
        ("redis://127.0.0.1:6379/0", "single", False, (("127.0.0.1", 6379),), 0, None),
        ("redis://127.0.0.1", "single", False, (("127.0.0.1", 6379),), 0, None),
        ("rediss://cache.internal:6380/3", "single", True, (("cache.internal", 6380),), 3, None),
        ("redis://[::1]:7000/2", "single", False, (("::1", 7000),), 2, None),
        ("redis+sentinel://10.0.0.1,10.0.0.2:26380/gateway/1", "sentinel", False,
         (("10.0.0.1", 26379), ("10.0.0.2", 26380)), 1, "gateway"),
        ("rediss+cluster://a:7000,b:7001", "cluster", True, (("a", 7000), ("b", 7001)), 0, None),
    ],
)
def test_store_url_forms(url, topology, tls, hosts, db, service):
    store = parse_store_url(url)
    assert (store.topology, store.tls, store.hosts, store.db, store.service_name) == (
        topology, tls, hosts, db, service)
    assert is_redis_url(url)


def test_credentials_are_parsed_and_never_described():
    store = parse_store_url("redis://gw:s%40cret@127.0.0.1:6379/0")
    assert (store.username, store.password) == ("gw", "s@cret")
    assert "cret" not in store.describe() and "gw" not in store.describe()
    alone = parse_store_url("rediss://:hunter2@127.0.0.1/0")
    assert (alone.username, alone.password) == (None, "hunter2")
    assert alone.describe() == "rediss://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite", "postgres://x/y", "redis://", "redis://:pw@", "redis://h:0/0", "redis://h:x/0",
        "redis://h/0/1", "redis://h/a", "redis://h/0?ssl=false", "redis://h/0#f", "redis://h /0",
        "redis://[::1/0", "redis+sentinel://h:1", "redis+cluster://h:1/0", "redis://a,b/0",
    ],
)
def test_bad_store_urls_are_refused_without_echoing_secrets(url):
    with pytest.raises(StoreUrlError) as info:
        parse_store_url(url.replace("pw", "topsecret"))
    assert "topsecret" not in str(info.value)


def test_hash_tag_keeps_a_scripts_keys_in_one_slot():
    assert hash_tagged("fluxgate:", "quota:abc", "lease", "n1") == "{fluxgate:quota:abc}:lease:n1"
    assert hash_tagged("fg:", "keys") == "{fg:keys}"


needs_redis = pytest.mark.skipif(redis_unavailable() is not None,
                                 reason=str(redis_unavailable()))


@needs_redis
def test_clients_reach_a_real_server_with_a_password(tmp_path):
    server = RedisServer(tmp_path, password="pa55-word").start()
    try:
        settings = Cluster(timeout=2.0)
        sync = redis_client(parse_store_url(server.url), settings, asynchronous=False)
        assert sync.set("fluxgate:probe", b"1") and sync.get("fluxgate:probe") == b"1"

        async def roundtrip():
            client = redis_client(parse_store_url(server.url), settings)
            try:
                return await client.get("fluxgate:probe")
            finally:
                await client.aclose()

        assert asyncio.run(roundtrip()) == b"1"
        wrong = redis_client(parse_store_url(server.url.replace("pa55", "bad")), settings,
                             asynchronous=False)
        import redis

        with pytest.raises(redis.exceptions.AuthenticationError):
            wrong.ping()
    finally:
        server.kill()


@needs_redis
def test_rediss_verifies_the_server_certificate(tmp_path):
    ca, other_ca = trustme.CA(), trustme.CA()
    cert, key = write_pair(ca.issue_cert("127.0.0.1"), tmp_path, "redis")
    server = RedisServer(tmp_path, tls=(str(cert), str(key))).start()
    try:
        trusted, untrusted = tmp_path / "ca.pem", tmp_path / "other.pem"
        ca.cert_pem.write_to_path(str(trusted))
        other_ca.cert_pem.write_to_path(str(untrusted))
        store = parse_store_url(server.url)
        good = redis_client(store, Cluster(timeout=2.0, tls_ca=str(trusted)), asynchronous=False)
        assert good.ping()
        import redis

        bad = redis_client(store, Cluster(timeout=2.0, tls_ca=str(untrusted)), asynchronous=False)
        with pytest.raises(redis.exceptions.ConnectionError, match="(?i)certificate"):
            bad.ping()
    finally:
        server.kill()
