"""Cluster mode's API keys with three gateway nodes (two workers each) on one real redis-server:
a key made on one node works on the others, a revocation on any node is refused by every
worker of every node within a second, fluxctl on a node acts on the cluster, and the faults:
Redis stopped mid-load, one node partitioned, Redis restarted empty, a hostile record."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading

import pytest

from tests.support.cluster_keys import (
    SIGNING_SECRET,
    TOKEN,
    admin,
    answers,
    node_config,
    status,
    wait_answer,
)
from tests.support.gateway import REPO, wait_until
from tests.support.redis_server import FaultRelay

pytestmark = pytest.mark.slow

REVOCATION_BOUND = 1.0  # s: a revocation on one node is refused everywhere within this


@pytest.fixture
def cluster(gateway_factory, redis_server, upstream):
    """start(urls=None): three nodes a, b, c (``urls`` maps a node to another store URL)."""

    def start(urls: dict[str, str] | None = None, names=("a", "b", "c")):
        urls = urls or {}
        return [gateway_factory(node_config(urls.get(n, redis_server.url), n, upstream.url),
                                workers=2, name=f"node-{n}") for n in names]

    return start


def create(gw, name: str, **fields) -> dict:
    code, doc = admin(gw, "POST", "/admin/keys", {"name": name, **fields})
    assert code == 201, doc
    return doc


def metrics(gw) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def store_down(gw) -> bool:
    return "fluxgate_cluster_keys_store_up 0" in metrics(gw)


def fluxctl(gw, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fluxgate.cli.fluxctl", "--config", str(gw.config_path), *args],
        cwd=REPO, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_keys_made_rotated_and_revoked_on_any_node_are_in_force_on_every_node(cluster):
    a, b, c = cluster()
    key = create(a, "alice", quota="1000/d")["key"]
    wait_answer([a, b, c], key, 200, seconds=3)
    # Revoked through node C: refused by every worker of every node within the bound.
    code, doc = admin(c, "POST", "/admin/keys/revoke", {"name": "alice"})
    assert code == 200 and doc["revoked"][0]["status"] == "revoked"
    assert answers(c, key) == {401}  # in force on C when answered
    wait_answer([a, b], key, 401, seconds=REVOCATION_BOUND)
    # Rotation through B: both keys work everywhere until the grace ends.
    old = create(b, "bob")["key"]
    wait_answer([a, b, c], old, 200, seconds=3)
    code, rotated = admin(b, "POST", "/admin/keys/rotate", {"name": "bob", "grace": "1h"})
    assert code == 201, rotated
    wait_answer([a, b, c], rotated["key"], 200, seconds=3)
    assert all(answers(gw, old) == {200} for gw in (a, b, c))
    # A name taken on one node cannot be taken on another.
    code, doc = admin(c, "POST", "/admin/keys", {"name": "bob"})
    assert code == 400 and "already exists" in doc["error_description"]
    # fluxctl on node B acts on the cluster (it writes Redis, then B's keys.db).
    made = fluxctl(b, "--json", "keys", "generate", "--name", "carol")
    assert made.returncode == 0, made.stderr
    carol = json.loads(made.stdout)["key"]
    wait_answer([a, b, c], carol, 200, seconds=3)
    revoked = fluxctl(b, "keys", "revoke", "carol")
    assert revoked.returncode == 0, revoked.stderr
    wait_answer([a, b, c], carol, 401, seconds=REVOCATION_BOUND)
    listed = fluxctl(a, "--json", "keys", "list")
    assert listed.returncode == 0 and "bob" in listed.stdout and "carol" not in listed.stdout
    text = metrics(a)
    assert "fluxgate_cluster_keys_store_up 1" in text
    assert "fluxgate_cluster_keys_refused_records_total 0" in text


def test_redis_stopped_mid_load_keys_keep_working_and_changes_answer_503(cluster, redis_server):
    a, b, c = cluster()
    key = create(a, "dave")["key"]
    doomed = create(b, "erin")["key"]
    wait_answer([a, b, c], key, 200, seconds=3)
    wait_answer([a, b, c], doomed, 200, seconds=3)
    codes: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            for gw in (a, b, c):
                codes.append(status(gw, key))

    thread = threading.Thread(target=load)
    thread.start()
    try:
        assert wait_until(lambda: len(codes) > 20, timeout=5)
        redis_server.stop()
        assert wait_until(lambda: all(store_down(gw) for gw in (a, b, c)), timeout=5)
        code, doc = admin(a, "POST", "/admin/keys", {"name": "frank"})
        assert code == 503 and doc["error"] == "store_unavailable", doc
        assert "redis://127.0.0.1:" in doc["error_description"] and "not made" in doc["error_description"]
        code, doc = admin(c, "POST", "/admin/keys/revoke", {"name": "erin"})
        assert code == 503, doc
        assert admin(b, "GET", "/admin/keys")[0] == 200  # reads need no Redis
        served = len(codes)
        assert wait_until(lambda: len(codes) > served + 20, timeout=5)  # still under load
    finally:
        stop.set()
        thread.join()
    assert codes and set(codes) == {200}, sorted(set(codes))
    assert answers(c, doomed) == {200}  # the refused revocation changed nothing anywhere
    failed = fluxctl(b, "keys", "generate", "--name", "gina")
    assert failed.returncode != 0 and "cannot be reached" in failed.stderr
    redis_server.start()
    # Back: changes work again, from any node, and reach every node.
    code, doc = admin(c, "POST", "/admin/keys/revoke", {"name": "erin"})
    assert code == 200, doc
    wait_answer([a, b, c], doomed, 401, seconds=3)
    assert "Traceback" not in a.log() + b.log() + c.log()


def test_a_partitioned_node_misses_revocations_then_catches_up_by_generation(
        cluster, redis_server):
    relay = FaultRelay(redis_server.port).start()
    try:
        a, b, c = cluster(urls={"c": relay.url})
        keys = [create(a, f"user{i}")["key"] for i in range(3)]
        for key in keys:
            wait_answer([a, b, c], key, 200, seconds=3)
        relay.partition()
        assert wait_until(lambda: store_down(c), timeout=5)  # C's polls now time out
        for i in range(2):
            assert admin(b, "POST", "/admin/keys/revoke", {"name": f"user{i}"})[0] == 200
        wait_answer([a, b], keys[0], 401, seconds=REVOCATION_BOUND)
        assert answers(c, keys[0]) == {200}  # cut off: C still has the key as it was
        code, doc = admin(c, "POST", "/admin/keys", {"name": "late"})
        assert code == 503, doc  # and cannot change keys meanwhile
        relay.heal()
        relay.reset()  # the stalled connections go; new ones see the generation
        for key in keys[:2]:
            wait_answer([c], key, 401, seconds=5)
        assert answers(c, keys[2]) == {200}
        assert "Traceback" not in c.log()
    finally:
        relay.stop()


def test_a_slow_redis_slows_key_changes_not_requests(cluster, redis_server):
    relay = FaultRelay(redis_server.port).start()
    try:
        a, b = cluster(urls={"b": relay.url}, names=("a", "b"))
        key = create(a, "olivia")["key"]
        wait_answer([a, b], key, 200, seconds=3)
        relay.delay = 0.1  # every exchange of node B with Redis: 100 ms each way
        codes = [status(b, key) for _ in range(50)]
        assert set(codes) == {200}
        made = create(b, "peggy")["key"]  # a change through B still works, slower
        wait_answer([a, b], made, 200, seconds=3)
        assert admin(a, "POST", "/admin/keys/revoke", {"name": "olivia"})[0] == 200
        wait_answer([a, b], key, 401, seconds=REVOCATION_BOUND + 0.5)  # one delayed read
        assert "Traceback" not in a.log() + b.log()
    finally:
        relay.stop()


def test_a_node_stopped_during_changes_has_them_before_it_serves_again(cluster):
    a, b = cluster(names=("a", "b"))
    gone = create(a, "quentin")["key"]
    wait_answer([a, b], gone, 200, seconds=3)
    b.stop()
    assert admin(a, "POST", "/admin/keys/revoke", {"name": "quentin"})[0] == 200
    made = create(a, "rupert")["key"]
    b.start()  # catches up at start, before its workers take requests
    assert answers(b, gone) == {401}
    assert answers(b, made) == {200}


def test_redis_restarted_empty_is_repaired_from_the_nodes_with_revocations_winning(
        cluster, redis_server):
    a, b, c = cluster()
    kept = create(a, "kept")["key"]
    revoked = create(b, "revoked")["key"]
    wait_answer([a, b, c], revoked, 200, seconds=3)
    assert admin(c, "POST", "/admin/keys/revoke", {"name": "revoked"})[0] == 200
    wait_answer([a, b, c], revoked, 401, seconds=REVOCATION_BOUND)
    redis_server.restart(empty=True)
    client = redis_server.client()
    # The nodes notice the empty Redis and seed it from their keys.db.
    assert wait_until(lambda: client.hlen("{fluxgate:keys}:records") == 2, timeout=5)
    # Every key is back as the nodes hold it: the kept key works, the revoked one does not.
    assert all(answers(gw, kept) == {200} for gw in (a, b, c))
    assert all(answers(gw, revoked) == {401} for gw in (a, b, c))
    # And the cluster takes changes again.
    new = create(c, "after")["key"]
    wait_answer([a, b, c], new, 200, seconds=3)
    assert admin(a, "POST", "/admin/keys/revoke", {"name": "kept"})[0] == 200
    wait_answer([a, b, c], kept, 401, seconds=REVOCATION_BOUND)


@pytest.mark.parametrize("raw", [b"{not json", b'{"key_id": 5}', b"[" + b"1," * 40000 + b"1]"])
def test_a_hostile_record_is_refused_and_never_lets_a_request_through(
        cluster, redis_server, raw):
    a, b = cluster(names=("a", "b"))
    key = create(a, "mallory")["key"]
    wait_answer([a, b], key, 200, seconds=3)
    assert admin(a, "POST", "/admin/keys/revoke", {"name": "mallory"})[0] == 200
    wait_answer([a, b], key, 401, seconds=REVOCATION_BOUND)
    key_id = key[3:15]
    client = redis_server.client()
    client.hset("{fluxgate:keys}:records", key_id, raw)
    generation = int(client.get("{fluxgate:keys}:generation")) + 1
    client.xadd("{fluxgate:keys}:log", {"ids": key_id}, id=f"{generation}-0")
    client.set("{fluxgate:keys}:generation", generation)
    client.publish("fluxgate:keys:changes", generation)
    assert wait_until(lambda: "is refused" in b.log(), timeout=5), b.log()[-2000:]
    assert all(answers(gw, key) == {401} for gw in (a, b))
    # The service goes on: a new key still travels.
    fresh = create(b, "trent")["key"]
    wait_answer([a, b], fresh, 200, seconds=3)
    assert "Traceback" not in a.log() + b.log()


def test_cluster_mode_refuses_to_start_without_a_shared_signing_secret(
        gateway_factory, redis_server, upstream):
    text = node_config(redis_server.url, "a", upstream.url).replace(
        f"api_keys: {{signing_secret: '{SIGNING_SECRET}'}}\n", "")
    with pytest.raises(RuntimeError, match="api_keys.signing_secret"):
        gateway_factory(text, workers=1, name="node-a")


def test_a_node_with_another_signing_secret_refuses_to_start(
        gateway_factory, redis_server, upstream):
    a = gateway_factory(node_config(redis_server.url, "a", upstream.url), name="node-a")
    create(a, "walter")
    other = node_config(redis_server.url, "b", upstream.url, secret="another-secret-" + "y" * 30)
    with pytest.raises(RuntimeError, match="differs from the one the keys in redis://"):
        gateway_factory(other, name="node-b")
