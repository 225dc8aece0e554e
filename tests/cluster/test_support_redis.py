"""The test support's redis-server and fault relay do what cluster mode's fault tests rely
on: a restart that keeps or loses data, a slow link, a partition, a hung server."""

from __future__ import annotations

import time

import pytest

from tests.support.redis_server import FaultRelay


def relay_client(relay: FaultRelay, timeout: float):
    import redis

    return redis.Redis(host="127.0.0.1", port=relay.port, socket_timeout=timeout,
                       socket_connect_timeout=timeout)


def test_restart_keeps_or_loses_the_data(redis_server):
    redis_server.client().set("k", b"v")
    redis_server.restart()
    assert redis_server.client().get("k") == b"v"
    redis_server.restart(empty=True)
    assert redis_server.client().get("k") is None


def test_relay_delays_partitions_and_heals(redis_server):
    import redis

    relay = FaultRelay(redis_server.port).start()
    try:
        client = relay_client(relay, timeout=1.0)
        assert client.ping()
        relay.delay = 0.15
        started = time.monotonic()
        assert client.ping()
        assert time.monotonic() - started >= 0.3  # held once each way
        relay.delay = 0.0
        relay.partition()
        with pytest.raises(redis.exceptions.TimeoutError):
            relay_client(relay, timeout=0.3).ping()
        relay.heal()
        assert relay_client(relay, timeout=1.0).ping()
    finally:
        relay.stop()


def test_a_paused_server_times_out_and_resumes(redis_server):
    import redis

    redis_server.pause()
    try:
        with pytest.raises(redis.exceptions.TimeoutError):
            redis_server.client(timeout=0.3).ping()
    finally:
        redis_server.resume()
    assert redis_server.client().ping()
